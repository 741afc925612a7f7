"""The real BOINC client (Debian boinc-client) as a persistent job, offline, with a real S3 store."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest

from tests.conftest import REPO
from tests.servers import is_local_peer, local_addresses

pytestmark = pytest.mark.boinc
LAUNCHER = os.path.join(REPO, "examples", "boinc", "boinc_launcher.py")


class ConnectionWatch(threading.Thread):
    """Samples `ss -tnp` and records every TCP connection of a boinc process to a non-local peer."""

    def __init__(self):
        super().__init__(daemon=True)
        self.local = local_addresses()
        self.bad = []
        self.samples = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True).stdout
            self.samples += 1
            for line in out.splitlines():
                if "boinc" not in line:
                    continue
                if not is_local_peer(line.split()[4], self.local):
                    self.bad.append(line)
            self.stop.wait(0.3)


def test_boinc_client_moves_between_hosts_with_one_identity(s3store, tmp_path):
    if not shutil.which("boinc") or not shutil.which("boinccmd"):
        pytest.fail("boinc-client missing: make test installs it (apt-get install boinc-client, no service start)")
    watch = ConnectionWatch()
    watch.start()
    try:
        # two runs, each in a fresh directory: two "worker nodes"
        r = s3store.cli("local", "--max-runs", "2", "--name", "boinctest", "--store", s3store.url, "--mode", "exit-code",
                        "--lifetime", "9s", "--vacate-grace", "30s", "--", sys.executable, LAUNCHER, "--offline",
                        "--checkpoint-every", "4", "--quit-timeout", "20", timeout=300)
    finally:
        watch.stop.set()
        watch.join()
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert watch.samples > 10 and watch.bad == [], "the client may talk to this machine only: %s" % watch.bad
    cpid = hashlib.md5(b"local#boinctest").hexdigest()
    dirs = set(re.findall(r"data directory (\S+)", out))
    assert len(dirs) == 2, "two hosts (checkpoint directories)"
    assert out.count("client started") >= 4
    quits = [float(x) for x in re.findall(r"client quit cleanly in ([\d.]+)s", out)]
    assert len(quits) == out.count("client started") and max(quits) < 30, quits
    assert "(SIGTERM, " in out, "at lifetime end the client is asked to quit before the final checkpoint"
    assert "host CPID %s (md5 of the job ID): created" % cpid in out
    run2 = re.findall(r"boinc-launcher: run 2, restored generation (\d+)", out)
    assert run2 and int(run2[0]) >= 1, "run 2 resumed the state of run 1"
    dest = tmp_path / "restored"
    rr = s3store.cli("checkpoint", "restore", "--store", s3store.url, "--job-id", "local#boinctest", "--dest", str(dest))
    assert rr.returncode == 0, rr.stderr
    state = (dest / "client_state.xml").read_text()
    assert re.findall(r"<host_cpid>([0-9a-f]+)</host_cpid>", state)[0] == cpid
    # the client's own log went through the store: it holds the starts of both hosts
    starts = (dest / "stdoutdae.txt").read_text().count("Initialization completed")
    assert starts == out.count("client started"), (starts, out.count("client started"))
    assert "<user_network_request>3</user_network_request>" in state, "offline: network mode never, kept in the state"
