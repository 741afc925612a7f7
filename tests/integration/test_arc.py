"""Persistent jobs through a real ARC CE: HTCondor-G (the sandbox pool's arc_gahp) submits each run
to A-REX 7.0 (lrms = fork) in the same chroot (scripts/arc-sandbox); the store is a real SeaweedFS."""

import os
import re
import subprocess
import time
import uuid

import pytest

from persistjob.repo.log import JobLog
from tests.conftest import REPO, Store, wait_for
from tests.integration.test_condor import Pool

pytestmark = pytest.mark.arc

ARC = os.path.join(REPO, "scripts", "arc-sandbox")
PY_IN = "/usr/bin/python3"
COUNTER_IN = "/opt/persistjob-src/examples/counter/counter.py"


class CE(Pool):
    """The sandbox pool seen through arc-sandbox (a valid proxy for every command); jobs go to the CE."""

    script = ARC

    def __init__(self, env):
        super().__init__(env)
        self.url = subprocess.run([ARC, "url"], capture_output=True, text=True, check=True).stdout.strip()

    def submit(self, *args, outdir):
        return super().submit("--grid", self.url, *args, outdir=outdir)


@pytest.fixture(scope="module")
def ce(seaweed):
    if os.geteuid() != 0:
        pytest.fail("the ARC sandbox needs root (chroot, mounts): run make test as root")
    try:
        subprocess.run([ARC, "up"], check=True, timeout=1500)
        yield CE(seaweed.env())
    finally:
        subprocess.run([ARC, "down"], timeout=300)


@pytest.fixture
def bucket_store(seaweed, weed_bucket):
    return Store("s3", "s3://%s/arc" % weed_bucket, seaweed.env(), seaweed)


def outdir():
    return "/home/pj/arc-" + uuid.uuid4().hex[:8]


def _runs(store, gid):
    return sorted(JobLog(store.backend(), gid).runs(), key=lambda r: r["run"])


def test_persistent_job_runs_three_times_through_the_ce(ce, bucket_store):
    """One GlobalJobId for the job's whole life, each attempt run by A-REX, each resuming from S3; the
    job's identity on the CE is the GlobalJobId (no job ad there); the worker had only python3."""
    c = ce.submit("--store", bucket_store.url, "--lifetime", "3s", "--interval", "1s", "--name", "arc3",
                  "--", PY_IN, COUNTER_IN, outdir=outdir())
    try:
        gid = wait_for(lambda: (ce.ad(c, ["GlobalJobId"]) or {}).get("GlobalJobId"), 60, "the job ad")
        # A-REX and the pool on 127.0.0.1 only, and no connection of theirs leaving this machine
        listening = [ln for ln in subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True).stdout.splitlines()
                     if "arched" in ln or "condor_" in ln]
        assert any("arched" in ln for ln in listening) and all(ln.split()[3].startswith("127.0.0.1:") for ln in listening), listening
        peers = [ln.split()[4] for ln in subprocess.run(["ss", "-Htnp"], capture_output=True, text=True).stdout.splitlines()
                 if "arched" in ln or "condor_" in ln]
        assert all(p.startswith(("127.", "[::ffff:127.")) for p in peers), peers
        t0 = time.monotonic()
        wait_for(lambda: len([r for r in _runs(bucket_store, gid) if r.get("exit_code") == 85]) >= 3, 600,
                 "three runs through the CE")
        took = time.monotonic() - t0
        ad = ce.ad(c, ["NumJobStarts", "NumHolds", "NumHoldsByReason", "GridJobId", "JobUniverse"])
    finally:
        ce.run("condor_rm", str(c), check=False)
    runs = [r for r in _runs(bucket_store, gid) if r.get("exit_code") == 85]
    assert all(r["job_id"] == gid for r in runs), "the identity is the GlobalJobId"
    assert runs[0]["restored_generation"] == 0
    for prev, nxt in zip(runs, runs[1:]):
        assert nxt["restored_generation"] == prev["generation"] > 0, (prev, nxt)
    assert all(r["software"]["bundle"] and "/bundle-" in r["software"]["persistjob_path"] for r in runs)
    # the .err file is rewritten by each run; each run's lines stay in its run record
    assert all("claim: job %s run %d " % (gid, r["run"]) in "\n".join(r["log"]) for r in runs)
    assert ad["JobUniverse"] == 9 and ad["GridJobId"].startswith("arc ")
    print("ARC: %d runs in %.0f s (about %.0f s run to run; NumHolds %s, by reason %s)"
          % (len(runs), took, took / max(1, len(runs) - 1), ad.get("NumHolds"), ad.get("NumHoldsByReason")))


def test_condor_rm_stops_the_payload_on_the_ce(ce, bucket_store):
    """The fork LRMS leaves the payload running when HTCondor-G removes the job: persistjob rm's removal
    record stops the wrapper there at its next lease check, with no commit after it."""
    c = ce.submit("--store", bucket_store.url, "--lifetime", "10m", "--interval", "1s", "--lease-check", "2s",
                  "--name", "arcrm", "--", PY_IN, COUNTER_IN, "--quiet", outdir=outdir())
    gid = wait_for(lambda: (ce.ad(c, ["GlobalJobId"]) or {}).get("GlobalJobId"), 60, "the job ad")
    log = JobLog(bucket_store.backend(), gid)
    try:
        wait_for(lambda: log.head().generation >= 2, 300, "commits from the CE")
    finally:
        r = ce.run("persistjob", "rm", str(c), "--wait", "120s", timeout=300, check=False)
    assert r.returncode == 0 and "removed 1 persistent job" in r.stdout, r.stdout + r.stderr
    removed = wait_for(lambda: next((x for x in log.records() if x.kind == "removed"), None), 30, "the removal record")
    ps = lambda: subprocess.run(["pgrep", "-f", "persistjob.*%s" % re.escape(bucket_store.url.split("//")[1])],  # noqa: E731
                                capture_output=True, text=True).stdout.split()
    wait_for(lambda: not ps(), 60, "the wrapper on the CE to stop")
    recs = list(log.records())
    assert recs[-1].seq == removed.seq, "nothing was written after the removal"


def _holds(ad, reason):
    """NumHoldsByReason.<reason> of an ad as the query printed it ('[ JobPolicy = 2; Unspecified = 3 ]')."""
    m = re.search(r"\b%s = (\d+)" % reason, str(ad.get("NumHoldsByReason") or ""))
    return int(m.group(1)) if m else 0


@pytest.mark.timeout(1200)  # several runs through the CE, each a GAHP submission: can pass 600 s on a busy machine
def test_crash_loop_through_the_ce_ends_held(ce, bucket_store):
    """A crash-looping payload: held with subcode 79, released with back-off, and after --release-limit
    holds of its own (not the gridmanager's hold after each run) it stays held."""
    out = outdir()
    # --retry-base 5s: a transient hold of HTCondor-G (A-REX answered a proxy delegation with HTTP 500 once in
    # CI) is released after it
    c = ce.submit("--store", bucket_store.url, "--name", "arccrash", "--crash-limit", "2", "--release-base", "3s",
                  "--release-limit", "2", "--retry-base", "5s", "--", PY_IN, COUNTER_IN, "--crash", outdir=out)
    attrs = ["JobStatus", "NumJobStarts", "HoldReasonCode", "HoldReasonSubCode", "HoldReason", "NumHoldsByReason"]
    try:
        final = wait_for(lambda: (lambda a: a if a and a["JobStatus"] == 5 and a.get("HoldReasonCode") == 3
                                  and _holds(a, "JobPolicy") >= 2 else None)(ce.ad(c, attrs)), 900, "two crash-loop holds")
        assert final["HoldReasonSubCode"] == 79 and "persistjob exit 79" in final["HoldReason"], final
        time.sleep(20)
        after = ce.ad(c, attrs)
        assert after["JobStatus"] == 5 and after["HoldReasonSubCode"] == 79, "not released past the limit"
        assert after["NumJobStarts"] == final["NumJobStarts"]
    finally:
        ce.run("condor_rm", str(c), check=False)
    err = ce.run("sh", "-c", "cat %s/*.err" % out).stdout
    assert "crash loop: payload exited 3" in err
