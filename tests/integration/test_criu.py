"""CRIU on this machine: scripts/criu-fetch provides a criu that passes `criu check` (the site's when new
enough, else Debian trixie's 4.1.1 in a private prefix); with it a process tree whose state lives only in
memory is dumped, killed, and restored by another process; and `--mode criu` makes any payload persistent."""

import os
import subprocess
import sys
import time

import pytest

from persistjob.repo.log import JobLog
from persistjob.worker.modes import CriuMode
from tests.conftest import REPO, Store, clean_env, wait_for

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


COUNTER_IN_MEMORY = r"""
import os, sys, time
blob = bytearray(os.urandom(1 << 20)) * int(sys.argv[2])   # resident, never written to a file
n = 0
while True:
    n += 1
    print("count", n, flush=True)
    if n >= int(sys.argv[1]):
        sys.exit(int(sys.argv[3]))
    time.sleep(0.05)
"""


def _counts(job_id):
    out = os.path.join(CriuMode.checkpoint_dir("persistjob-checkpoint", job_id), CriuMode.OUT)
    return [int(line.split()[1]) for line in open(out) if line.startswith("count ")]


def test_mode_criu_carries_a_memory_only_counter_across_local_runs(criu, tmp_path):
    """200 MB resident, a counter kept only in memory: `persistjob local --mode criu` re-runs it (each run
    restores the tree CRIU dumped at the previous run's end), the count goes on without a restart, and the
    payload's own final exit (0) ends `local`."""
    payload = tmp_path / "count.py"
    payload.write_text(COUNTER_IN_MEMORY)
    store = Store("file", "file://%s" % (tmp_path / "store"), {})
    name = "criu-" + os.urandom(4).hex()
    r = store.cli("local", "--max-runs", "10", "--name", name, "--store", store.url, "--mode", "criu",
                  "--lifetime", "3s", "--interval", "1s", "--", sys.executable, str(payload), "100", "200", "0",
                  env={"PERSISTJOB_CRIU": criu}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(JobLog(store.backend(), "local#" + name).runs(), key=lambda x: x["run"])
    assert len(runs) >= 3 and runs[-1]["exit_code"] == 0, runs
    assert all(x["restored_generation"] == p["generation"] for p, x in zip(runs, runs[1:]))
    assert _counts("local#" + name) == list(range(1, 101)), "restarted instead of restored"


def test_mode_criu_passes_the_payloads_own_exit_status(criu, tmp_path):
    payload = tmp_path / "count.py"
    payload.write_text(COUNTER_IN_MEMORY)
    store = Store("file", "file://%s" % (tmp_path / "store"), {})
    job = "criu-exit-" + os.urandom(4).hex()
    env = clean_env({"PERSISTJOB_CRIU": criu})
    cmd = [sys.executable, "-m", "persistjob", "run", "--job-id", job, "--store", store.url, "--mode", "criu",
           "--lifetime", "2s", "--interval", "1s", "--", sys.executable, str(payload), "60", "10", "7"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 85, first.stderr[-2000:]
    second = subprocess.run(cmd[:-2] + ["60", "10", "7"], env=env, capture_output=True, text=True, timeout=300)
    # the restored payload exits 7 by itself: the wrapper sees its real status (a foreground criu restore says 0)
    assert second.returncode == 1 and "payload exited 7" in second.stderr, second.stderr[-2000:]
    assert _counts(job)[-1] == 60 and _counts(job) == list(range(1, 61))


def test_mode_criu_without_a_usable_criu_is_a_configuration_error(tmp_path):
    store = Store("file", "file://%s" % (tmp_path / "store"), {})
    r = subprocess.run([sys.executable, "-m", "persistjob", "run", "--job-id", "nocriu", "--store", store.url,
                        "--mode", "criu", "--", "/bin/sleep", "100"], env=clean_env({"PERSISTJOB_CRIU": "/bin/false"}),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 78 and r.stderr.strip().splitlines()[-1].startswith("persistjob: error: --mode criu: no usable criu")
    assert "Traceback" not in r.stderr
    assert JobLog(store.backend(), "nocriu").head().run == 0, "nothing was claimed"
