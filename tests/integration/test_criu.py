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
    """The payload's output on this node, where a run that did not end tidily (its payload failed, an
    error of ours) leaves the job's directory."""
    out = os.path.join(CriuMode.checkpoint_dir("persistjob-checkpoint", job_id), CriuMode.OUT)
    return [int(line.split()[1]) for line in open(out) if line.startswith("count ")]


def _stored_counts(store, job_id):
    """The payload's output in the job's newest generation, restored from the store: a run that ended
    tidily (its state committed, 0 or 85) has removed the job's directory on this node."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pj-criu-counts-") as d:
        r = store.cli("checkpoint", "restore", "--store", store.url, "--job-id", job_id, "--dest", os.path.join(d, "w"))
        assert r.returncode == 0, r.stderr
        with open(os.path.join(d, "w", CriuMode.OUT)) as f:
            return [int(line.split()[1]) for line in f if line.startswith("count ")]


def _tidied(job_id):
    """The job's directory on this node is gone, its lock file (and criu's logs) kept."""
    ckdir = CriuMode.checkpoint_dir("", job_id)
    return not os.path.exists(ckdir) and os.path.exists(os.path.join(os.path.dirname(ckdir), "lock"))


def test_mode_criu_carries_a_memory_only_counter_across_local_runs(criu, tmp_path):
    """200 MB resident, a counter kept only in memory: `persistjob local --mode criu` re-runs it (each run
    restores the tree CRIU dumped at the previous run's end), the count goes on without a restart, and the
    payload's own final exit (0) ends `local`."""
    payload = tmp_path / "count.py"
    payload.write_text(COUNTER_IN_MEMORY)
    store = Store("file", "file://%s" % (tmp_path / "store"), {})
    name = "criu-" + os.urandom(4).hex()
    # 200 counts take at least 10 s of the payload's own time (it sleeps 50 ms a count) and a run gives
    # it at most its 3 s lifetime (and the moment it takes to freeze it), so at least three runs however
    # fast or slow the machine: a restored tree is dumped and restored again.  (100 counts, at least
    # 5 s, once fitted in two runs.)
    r = store.cli("local", "--max-runs", "30", "--name", name, "--store", store.url, "--mode", "criu",
                  "--lifetime", "3s", "--interval", "1s", "--", sys.executable, str(payload), "200", "200", "0",
                  env={"PERSISTJOB_CRIU": criu}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(JobLog(store.backend(), "local#" + name).runs(), key=lambda x: x["run"])
    assert len(runs) >= 3 and runs[-1]["exit_code"] == 0, runs
    assert all(x["restored_generation"] == p["generation"] for p, x in zip(runs, runs[1:]))
    assert _stored_counts(store, "local#" + name) == list(range(1, 201)), "restarted instead of restored"
    assert _tidied("local#" + name), "the payload's own exit 0, committed: its 200 MB directory here is removed"


def test_mode_criu_passes_the_payloads_own_exit_status(criu, tmp_path):
    payload, store, job = _criu_job(tmp_path, "criu-exit-")
    env = clean_env({"PERSISTJOB_CRIU": criu})
    cmd = [sys.executable, "-m", "persistjob", "run", "--job-id", job, "--store", store.url, "--mode", "criu",
           "--lifetime", "2s", "--interval", "1s", "--", sys.executable, str(payload), "60", "10", "7"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 85, first.stderr[-2000:]
    second = subprocess.run(cmd[:-2] + ["60", "10", "7"], env=env, capture_output=True, text=True, timeout=300)
    # the restored payload exits 7 by itself: the wrapper sees its real status (a foreground criu restore says 0)
    assert second.returncode == 1 and "payload exited 7" in second.stderr, second.stderr[-2000:]
    assert _counts(job)[-1] == 60 and _counts(job) == list(range(1, 61)), "a failed payload's directory stays"


def test_mode_criu_without_a_usable_criu_is_a_configuration_error(tmp_path):
    store = Store("file", "file://%s" % (tmp_path / "store"), {})
    r = subprocess.run([sys.executable, "-m", "persistjob", "run", "--job-id", "nocriu", "--store", store.url,
                        "--mode", "criu", "--", "/bin/sleep", "100"], env=clean_env({"PERSISTJOB_CRIU": "/bin/false"}),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 78 and r.stderr.strip().splitlines()[-1].startswith("persistjob: error: --mode criu: no usable criu")
    assert "Traceback" not in r.stderr
    assert JobLog(store.backend(), "nocriu").head().run == 0, "nothing was claimed"


def _criu_job(tmp_path, prefix):
    """The in-memory counter as a payload file, a file:// store, and a fresh job ID."""
    payload = tmp_path / "count.py"
    payload.write_text(COUNTER_IN_MEMORY)
    return payload, Store("file", "file://%s" % (tmp_path / "store"), {}), prefix + os.urandom(4).hex()


def _commit_altered(store, job, tmp_path, change, keep=3):
    """What a broken dump or a node with other CPU features would have left: the job's newest generation,
    its images changed by ``change``, committed as a new generation (by this test, as a run of the job)."""
    from persistjob.repo import JobRepo

    repo = JobRepo(store.backend(), job, keep=keep)
    repo.claim()
    root = tmp_path / ("altered-%s" % os.urandom(3).hex())
    root.mkdir()
    ws = repo.workspace(str(root), racy=0)
    try:
        repo.restore(ws)
        change(root / CriuMode.IMAGES)
        repo.commit(ws, ws.snapshot())
        repo.end_run(85, "altered by the test")
    finally:
        ws.close()
    return repo.mine.generation


def _truncate_core(images):
    core = images / "core-1.img"
    core.write_bytes(core.read_bytes()[:40])


def _foreign_cpu(images):
    """cpuinfo.img with xfeatures_mask 0x7f (AVX-512 state among them): field 8 of the x86 entry."""
    path = images / "cpuinfo.img"
    data = bytearray(path.read_bytes())
    msg = 12 + 2  # magic (8), entry length (4), then field 1 (x86_entry): tag and a one-byte length
    end, i = msg + data[msg - 1], msg
    while i < end:
        tag = data[i]
        i += 1
        if tag & 7 == 0:  # varint
            if tag >> 3 == 8:
                assert data[i] < 0x80, "a one-byte xfeatures_mask"
                data[i] = 0x7f
                path.write_bytes(bytes(data))
                return
            while data[i] & 0x80:
                i += 1
            i += 1
        elif tag & 7 == 2:  # length-delimited
            i += 1 + data[i]
        else:
            raise AssertionError("unexpected wire type in cpuinfo.img")
    raise AssertionError("no xfeatures_mask in cpuinfo.img")


def _run_record(store, job, run):
    return [r for r in JobLog(store.backend(), job).runs() if r["run"] == run][0]


def test_mode_criu_images_that_do_not_restore_fall_back_to_the_previous_generation(criu, tmp_path):
    payload, store, job = _criu_job(tmp_path, "criu-damaged-")
    env = {"PERSISTJOB_CRIU": criu}
    first = _run(store, job, payload, env)
    assert first.returncode == 85, first.stderr[-2000:]
    good = JobLog(store.backend(), job).head().generation
    damaged = _commit_altered(store, job, tmp_path, _truncate_core)
    second = _run(store, job, payload, env)
    assert second.returncode == 85, second.stderr[-3000:]
    rec = _run_record(store, job, 3)
    assert rec["restored_generation"] == good and [f["generation"] for f in rec["fallbacks"]] == [damaged], rec
    assert "CRIU images do not restore" in rec["fallbacks"][0]["error"], rec
    counts = _stored_counts(store, job)
    assert counts == list(range(1, len(counts) + 1)), "restored from the previous generation, no restart"


def test_mode_criu_images_from_a_cpu_this_node_lacks_hold_the_job_without_fallback_or_cold_start(criu, tmp_path):
    payload, store, job = _criu_job(tmp_path, "criu-cpu-")
    env = {"PERSISTJOB_CRIU": criu}
    assert _run(store, job, payload, env).returncode == 85
    foreign = _commit_altered(store, job, tmp_path, _foreign_cpu)
    for extra in ((), ("--criu-cold-start",)):
        r = _run(store, job, payload, env, *extra)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 78 and "this node's CPU cannot run the job's images" in last, r.stderr[-2000:]
        assert "unsupported bits" in last and "Traceback" not in r.stderr
        head = JobLog(store.backend(), job).head()
        assert (head.kind, head.data["exit_code"], head.generation) == ("end", 78, foreign), head
    assert _counts(job)[-1] < 400, "the payload never ran on from scratch"


def test_mode_criu_cold_start_only_when_asked(criu, tmp_path):
    payload, store, job = _criu_job(tmp_path, "criu-cold-")
    env = {"PERSISTJOB_CRIU": criu}
    assert _run(store, job, payload, env, "--keep", "1").returncode == 85
    before = _stored_counts(store, job)
    _commit_altered(store, job, tmp_path, _truncate_core, keep=1)  # with --keep 1, the only retained generation
    held = _run(store, job, payload, env, "--keep", "1")
    assert held.returncode == 78 and "none of the 1 retained generations restored intact" in held.stderr, held.stderr
    cold = _run(store, job, payload, env, "--keep", "1", "--criu-cold-start")
    assert cold.returncode == 85 and "--criu-cold-start: the payload starts anew" in cold.stderr, cold.stderr[-2000:]
    after = _stored_counts(store, job)
    assert before[-1] > 5 and after[0] == 1 and after == list(range(1, len(after) + 1)), "started anew, not restored"


def _run(store, job, payload, env, *extra):
    cmd = [sys.executable, "-m", "persistjob", "run", "--job-id", job, "--store", store.url, "--mode", "criu",
           "--lifetime", "3s", "--interval", "1s", *extra, "--", sys.executable, str(payload), "400", "10", "0"]
    return subprocess.run(cmd, env=clean_env(env), capture_output=True, text=True, timeout=300)


def test_mode_criu_two_instances_on_one_node_only_the_newest_commits(criu, tmp_path):
    """Both use the job's one checkpoint directory on this node: the newer one's claim supersedes the older in
    the store, ends the older one's tree before its restore replaces the directory, and goes on from the
    last commit; the older one, fenced, exits 75; no commit after the newer claim is the older one's."""
    payload, store, job = _criu_job(tmp_path, "criu-two-")
    env = clean_env({"PERSISTJOB_CRIU": criu})
    cmd = [sys.executable, "-m", "persistjob", "run", "--job-id", job, "--store", store.url, "--mode", "criu",
           "--interval", "1s", "--lease-check", "1s"]
    log = JobLog(store.backend(), job)
    old = subprocess.Popen(cmd + ["--lifetime", "10m", "--", sys.executable, str(payload), "100000", "20", "0"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: log.head().generation >= 2, 120, "the first instance to commit")
        new = subprocess.run(cmd + ["--lifetime", "4s", "--", sys.executable, str(payload), "100000", "20", "0"],
                             env=env, capture_output=True, text=True, timeout=300)
        assert old.wait(timeout=120) == 75, old.stderr.read()[-2000:]
    finally:
        if old.poll() is None:
            old.kill()
    assert new.returncode == 85, new.stderr[-3000:]
    assert "an older instance of this job still runs on this node" in new.stderr
    recs = sorted(log.records(), key=lambda r: r.seq)
    claim = [r for r in recs if r.kind == "claim"][-1]
    assert claim.data["pid"] != old.pid
    later = [r for r in recs if r.seq > claim.seq and r.kind == "commit"]
    assert later and all(r.data["pid"] == claim.data["pid"] for r in later), [(r.seq, r.kind, r.data["pid"]) for r in recs]
    counts = _stored_counts(store, job)
    assert counts == list(range(1, len(counts) + 1)), "the newer instance went on from the last commit, no gap, no rerun"
    assert _tidied(job), "the newer instance ended with its state committed"


@pytest.fixture
def nobody_dir():
    """A directory the unprivileged user can use (pytest's tmp_path is root's alone)."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="pj-criu-nobody-")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _bundle(where):
    bundle = os.path.join(where, "persistjob.pyz")
    built = subprocess.run([sys.executable, "-m", "persistjob", "bundle", "-o", bundle], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr
    os.chmod(bundle, 0o644)
    return bundle


def test_mode_criu_without_root_runs_in_a_user_namespace_from_the_bundle(criu, nobody_dir):
    """A job that is not root, at a site that installed nothing for it: the bundle on the system's python3, as
    'nobody', with no capabilities; criu and the tree in an unprivileged user namespace. The count kept only in
    memory goes on across runs and the payload's own exit status (3) ends the job."""
    bundle = _bundle(nobody_dir)
    payload = os.path.join(nobody_dir, "count.py")
    with open(payload, "w") as f:
        f.write(COUNTER_IN_MEMORY)
    os.chmod(payload, 0o644)
    store = Store("file", "file://%s" % os.path.join(nobody_dir, "store"), {})
    job = "criu-nobody-" + os.urandom(4).hex()
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
           "env", "-i", "PATH=/usr/bin:/bin", "HOME=" + nobody_dir, "PERSISTJOB_CRIU=" + criu,
           "/usr/bin/python3", bundle, "run", "--job-id", job, "--store", store.url, "--mode", "criu",
           "--lifetime", "3s", "--interval", "1s", "--", "/usr/bin/python3", payload, "120", "20", "3"]
    codes = []
    for _ in range(10):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=nobody_dir)
        codes.append(r.returncode)
        assert r.returncode in (85, 1), r.stderr[-3000:]
        assert "unprivileged, in a user namespace of its own" in r.stderr
        if r.returncode == 1:
            assert "payload exited 3" in r.stderr, r.stderr[-2000:]
            break
    assert codes[-1] == 1 and len(codes) >= 2, codes
    runs = sorted(JobLog(store.backend(), job).runs(), key=lambda x: x["run"])
    assert all(x["restored_generation"] == p["generation"] for p, x in zip(runs, runs[1:])), runs
    assert _counts(job) == list(range(1, 121)), "restarted instead of restored"
    ckdir = CriuMode.checkpoint_dir("", job)
    assert os.stat(ckdir).st_uid == 65534, "made as nobody"


def test_mode_criu_without_root_or_user_namespaces_is_refused_in_one_line(criu, nobody_dir):
    fake = os.path.join(nobody_dir, "bin")
    os.mkdir(fake)
    with open(os.path.join(fake, "unshare"), "w") as f:  # what a kernel without user namespaces answers
        f.write("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    os.chmod(os.path.join(fake, "unshare"), 0o755)
    os.chmod(fake, 0o755)
    store = Store("file", "file://%s" % os.path.join(nobody_dir, "store"), {})
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "-i",
                        "PATH=%s:/usr/bin:/bin" % fake, "PERSISTJOB_CRIU=" + criu, "HOME=" + nobody_dir,
                        "/usr/bin/python3", _bundle(nobody_dir), "run", "--job-id", "nouserns", "--store", store.url,
                        "--mode", "criu", "--", "/bin/sleep", "100"], capture_output=True, text=True, timeout=120,
                       cwd=nobody_dir)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 78 and "Traceback" not in r.stderr, r.stderr
    assert last == ("persistjob: error: --mode criu needs root, or unprivileged user namespaces to run criu in "
                    "(unshare: unshare failed: Operation not permitted)"), last
