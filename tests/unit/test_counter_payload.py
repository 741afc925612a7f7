"""The example payload survives checkpoint signals arriving at any moment.

Regression test: the signal handler saved state while the main loop was
between writing its temporary file and renaming it, and the main loop's
rename then failed (seen once in CI as a flaky signal-mode test).
"""

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import COUNTER


def test_counter_survives_a_storm_of_checkpoint_signals(tmp_path):
    p = subprocess.Popen([sys.executable, COUNTER, "--step", "0", "--quiet"], cwd=str(tmp_path),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "counter.json").exists():
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read().decode()
            time.sleep(0.01)
        for _ in range(3000):
            if p.poll() is not None:
                break
            os.kill(p.pid, signal.SIGUSR1)
            time.sleep(0.0003)
        assert p.poll() is None, "payload died: %s" % p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
    assert p.returncode == 0, p.stderr.read().decode()
    assert json.loads((tmp_path / "counter.json").read_text())["count"] > 0
