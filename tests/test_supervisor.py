"""The supervisor restarts a crashed child and says so, and stops every child on request."""

from __future__ import annotations

import os
import sys
import threading
import time

from endpoints_app.supervisor import Child, Supervisor


def test_a_crashed_child_is_restarted_and_all_stop_on_request(capfd, tmp_path):
    marker = tmp_path / "starts"
    crasher = Child("crasher", [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x'); raise SystemExit(3)"])
    sleeper = Child("sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"])
    supervisor = Supervisor([crasher, sleeper], dict(os.environ))
    runner = threading.Thread(target=supervisor.run)
    runner.start()
    deadline = time.monotonic() + 20
    while (not marker.exists() or len(marker.read_text()) < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    sleeper_pid = sleeper.popen.pid
    supervisor.stopping.set()
    runner.join(timeout=30)
    assert not runner.is_alive()
    out = capfd.readouterr().out
    assert len(marker.read_text()) >= 2  # started again after crashing
    assert "crasher exited with code 3; restarting it in" in out
    assert "restarting crasher" in out
    assert "sleeper  | up" in out
    assert sleeper.popen.poll() is not None  # stopped with the supervisor
    try:
        os.kill(sleeper_pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
