"""``python -m endpoints_app.runtime.model_server``: run the model server in app.py."""

from __future__ import annotations

import logging
import os
import sys

# Importing app confines the process first (the sandbox's early stage), then imports the rest.
from endpoints_app.runtime.model_server.app import main

try:
    code = main()
except SystemExit as exc:  # argparse errors, a bad standby assignment
    code = exc.code if isinstance(exc.code, int) else 2
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
# Skip interpreter teardown (see the end of app.py).
os._exit(code)
