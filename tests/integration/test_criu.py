"""CRIU on this machine (issue 14, first part): scripts/criu-fetch provides a criu that passes `criu check`
(the site's when new enough, else Debian trixie's 4.1.1 in a private prefix), and with it a process tree
whose state lives only in memory is dumped, killed, and restored by another process: it continues where
it was, and its own exit status reaches the restoring process.  The wrapper's --mode criu builds on this."""

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, wait_for

pytestmark = pytest.mark.criu

PAYLOAD = r"""
import os, sys, time
blob = bytearray(os.urandom(1 << 20)) * int(sys.argv[3])  # state that lives only in memory
n = 0
out = open(sys.argv[1], "a")
while True:
    n += 1
    out.write("%d %d\n" % (n, len(blob)))
    out.flush()
    if n >= int(sys.argv[2]):
        sys.exit(7)
    time.sleep(0.05)
"""


@pytest.fixture(scope="session")
def criu():
    if os.geteuid() != 0:
        pytest.fail("CRIU needs root here (or capabilities on its binary): run make test as root")
    r = subprocess.run([os.path.join(REPO, "scripts", "criu-fetch")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def test_the_fetched_criu_passes_its_check(criu):
    r = subprocess.run([criu, "check"], capture_output=True, text=True)
    assert r.returncode == 0 and "Looks good" in r.stdout + r.stderr
    version = subprocess.run([criu, "--version"], capture_output=True, text=True).stdout
    assert int(version.split("Version: ")[1].split(".")[0]) >= 4


def test_memory_only_state_survives_dump_kill_and_restore_by_another_process(criu, tmp_path):
    payload = tmp_path / "payload.py"
    payload.write_text(PAYLOAD)
    out, images, pidfile = tmp_path / "out.txt", tmp_path / "images", tmp_path / "pid"
    images.mkdir()
    # the payload as init of its own PID namespace (a restore never clashes with a PID in use), its stdio
    # in append mode (a file open for writing whose size changed after the dump fails the restore)
    with open(tmp_path / "stdout", "a") as so, open(tmp_path / "stderr", "a") as se:
        p = subprocess.Popen(["unshare", "--pid", "--fork", "setsid", sys.executable, str(payload), str(out), "200", "20"],
                             stdin=subprocess.DEVNULL, stdout=so, stderr=se, start_new_session=True)
    wait_for(lambda: out.exists() and len(out.read_text().split("\n")) > 10, 60, "the payload to count")
    init = int(subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()[0])
    t = time.monotonic()
    dump = subprocess.run([criu, "dump", "-t", str(init), "-D", str(images), "-o", "dump.log"], capture_output=True,
                          text=True, timeout=120)
    dump_s = time.monotonic() - t
    assert dump.returncode == 0, (images / "dump.log").read_text()[-2000:]
    p.wait(timeout=30)  # criu dump ends the tree (no --leave-running)
    at_dump = int(out.read_text().split()[-2])
    assert at_dump < 200
    t = time.monotonic()
    restore = subprocess.run([criu, "restore", "-D", str(images), "-d", "--restore-sibling", "--pidfile", str(pidfile),
                              "-o", "restore.log"], capture_output=True, text=True, timeout=120)
    restore_s = time.monotonic() - t
    assert restore.returncode == 0, (images / "restore.log").read_text()[-2000:]
    pid = int(pidfile.read_text())
    _, status = os.waitpid(pid, 0)  # the restored tree is this process's child: its real exit status
    assert os.waitstatus_to_exitcode(status) == 7
    counts = [int(line.split()[0]) for line in out.read_text().splitlines()]
    assert counts == list(range(1, 201)), "the count continued from %d without a restart or a gap" % at_dump
    size = sum(f.stat().st_size for f in images.iterdir())
    print("criu: dump %.2fs, restore %.2fs, %.1f MB of images for a 20 MB payload" % (dump_s, restore_s, size / 2 ** 20))
