"""Persistent jobs on a real HTCondor 23.9 pool (scripts/condor-sandbox), store on a real SeaweedFS."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from persistjob.repo.log import JobLog
from tests.conftest import COUNTER, REPO, Store, clean_env, wait_for

pytestmark = pytest.mark.condor

SANDBOX = os.path.join(REPO, "scripts", "condor-sandbox")
SRC_IN_CHROOT = "/opt/persistjob-src"
COUNTER_IN = SRC_IN_CHROOT + "/examples/counter/counter.py"
PY_IN = "/usr/bin/python3"
# what a job needs of the submitter's environment to reach the store; the credentials ride in a 0600 file
STORE_ENV = ["--getenv", "AWS_ENDPOINT_URL_S3", "--getenv", "AWS_DEFAULT_REGION", "--getenv", "AWS_EC2_METADATA_DISABLED"]


class Pool:
    script = SANDBOX  # what runs a command in the chroot as the submit user

    def __init__(self, env):
        self.env = env

    def run(self, *cmd, timeout=180, check=True):
        r = subprocess.run([self.script, "run", "--", *cmd], env=clean_env(self.env), capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError("%s exited %d:\n%s%s" % (" ".join(cmd), r.returncode, r.stdout, r.stderr))
        return r

    def submit(self, *args, outdir):
        self.run("mkdir", "-p", outdir)
        r = self.run("persistjob", "submit", *STORE_ENV, "--output-dir", outdir, *args)
        return int(re.search(r"submitted to cluster (\d+)", r.stdout).group(1))

    def ads(self, constraint, attrs):
        """Job ads through htcondor2 Schedd.query, inside the pool."""
        code = ("import htcondor2, json, sys; ads = htcondor2.Schedd().query(constraint=sys.argv[1], projection=sys.argv[2].split(','));"
                "print(json.dumps([{k: (ad.eval(k) if k in ad else None) for k in sys.argv[2].split(',')} for ad in ads], default=str))")
        return json.loads(self.run(PY_IN, "-c", code, constraint, ",".join(attrs)).stdout)

    def ad(self, cluster, attrs):
        """The first job of a cluster, undefined attributes left out (None if it left the queue)."""
        ads = self.ads("ClusterId == %d" % cluster, attrs)
        return {k: v for k, v in ads[0].items() if v is not None} if ads else None

    def rm(self, cluster):
        self.run("condor_rm", str(cluster), check=False)


@pytest.fixture(scope="session")
def pool(seaweed):
    if os.geteuid() != 0:
        pytest.fail("the HTCondor sandbox needs root (debootstrap, chroot, mounts): run make test as root")
    was_up = "running:" in subprocess.run([SANDBOX, "status"], capture_output=True, text=True).stderr
    try:
        subprocess.run([SANDBOX, "up"], check=True, timeout=1200)
    except BaseException:
        if not was_up:  # up may have started condor_master before failing: stop what we started
            subprocess.run([SANDBOX, "down"], timeout=300)
        raise
    yield Pool(seaweed.env())
    if not was_up:
        subprocess.run([SANDBOX, "down"], check=True, timeout=300)


@pytest.fixture
def bucket_store(seaweed, weed_bucket):
    return Store("s3", "s3://%s/jobs" % weed_bucket, seaweed.env(), seaweed)


def outdir():
    return "/home/pj/t-" + uuid.uuid4().hex[:8]


def joblog(store, gid):
    return JobLog(store.backend(), gid)


def commits_only_by_owner(recs):
    """Every commit/end record was written by the instance of the newest claim before it."""
    owner = None
    for r in recs:
        if r.kind == "claim":
            owner = (r.data.get("host"), r.data.get("pid"))
        elif (r.data.get("host"), r.data.get("pid")) != owner:
            return False
    return True


def test_job_runs_three_times_resuming_from_s3(pool, bucket_store):
    """The default submit: the bundle is the job's executable. The slot's python3 runs it with nothing
    of persistjob's installed for it: persistjob and boto3 come from the bundle (the run records say)."""
    out = outdir()
    c = pool.submit("--store", bucket_store.url, "--lifetime", "4s", "--interval", "1s", "--name", "three",
                    "--", PY_IN, COUNTER_IN, outdir=out)
    try:
        wait_for(lambda: (pool.ad(c, ["NumJobStarts"]) or {}).get("NumJobStarts", 0) >= 3, 180, "three starts")
        gid = pool.ad(c, ["GlobalJobId"])["GlobalJobId"]
        wait_for(lambda: len(joblog(bucket_store, gid).runs()) >= 3, 120, "the third run's record")
        ad = pool.ad(c, ["GlobalJobId", "NumJobStarts", "PersistGeneration", "PersistRuns", "PersistLastCommit",
                         "PersistBytes", "PersistStore"])
        # chirp attributes, seen through Schedd.query
        assert ad["PersistGeneration"] >= 2 and ad["PersistRuns"] >= 2 and ad["PersistBytes"] > 0
        assert abs(time.time() - ad["PersistLastCommit"]) < 120
        assert ad["PersistStore"].startswith(bucket_store.url.rstrip("/"))
    finally:
        pool.rm(c)
    log = joblog(bucket_store, ad["GlobalJobId"])
    runs = sorted(log.runs(), key=lambda r: r["run"])
    assert len(runs) >= 3
    assert all(r["job_id"] == ad["GlobalJobId"] for r in runs)
    ended = [r for r in runs if r.get("exit_code") == 85]
    assert len(ended) >= 2
    for prev, nxt in zip(runs, runs[1:]):
        if prev.get("exit_code") == 85:
            assert nxt["restored_generation"] == prev["generation"] > 0, (prev, nxt)
    assert commits_only_by_owner(list(log.records()))
    for r in runs:
        sw = r["software"]
        assert sw["python"].startswith("3.") and sw["bundle"].endswith(".pyz"), sw
        unpacked = sw["persistjob_path"].rsplit("/persistjob", 1)[0]
        assert "/bundle-" in unpacked and sw["boto3_path"] == unpacked + "/boto3", sw
    # chirp sets what changed, not every attribute at every run (each set is a user-log event)
    userlog = pool.run("sh", "-c", "cat %s/three.%d.log" % (out, c)).stdout
    changes = re.findall(r"(?:Setting|Changing) job attribute (\w+)", userlog)
    assert "PersistStore" not in changes and "PersistName" not in changes, changes
    # one per commit, and one per run start at most (the ad a run starts with may predate the last commit)
    starts, gens = userlog.count("Job executing on host"), log.head().generation
    assert changes.count("PersistGeneration") <= gens + starts, (changes, gens, starts)
    assert changes.count("PersistRuns") <= starts, (changes, starts)


def test_the_secret_key_is_nowhere_but_in_the_credentials_file(pool, bucket_store):
    """The default submit resolves the submitter's S3 credentials and sends them as a 0600 file: the secret
    key is in no job ad (condor_q -l, condor_history -l), no user log, no output, and the job commits."""
    secret = bucket_store.env["AWS_SECRET_ACCESS_KEY"]
    out = outdir()
    c = pool.submit("--store", bucket_store.url, "--lifetime", "3s", "--interval", "1s", "--name", "secret",
                    "--", PY_IN, COUNTER_IN, outdir=out)
    try:
        ad = wait_for(lambda: (lambda a: a if a and a.get("NumJobStarts", 0) >= 2 and a.get("PersistGeneration", 0) >= 1
                               else None)(pool.ad(c, ["NumJobStarts", "PersistGeneration", "GlobalJobId",
                                                      "TransferInput", "Environment"])), 180, "two runs and a commit")
        seen = {"condor_q -l": pool.run("condor_q", "-l", str(c)).stdout}
    finally:
        pool.rm(c)
    wait_for(lambda: not pool.ads("ClusterId == %d" % c, ["ClusterId"]), 120, "the job to leave the queue")
    seen["condor_history -l"] = pool.run("condor_history", "-l", str(c)).stdout
    seen["user log, .out, .err"] = pool.run("sh", "-c", "cat %s/*" % out).stdout
    assert "AWS_SHARED_CREDENTIALS_FILE=persistjob-credentials" in ad["Environment"]
    cred = [f for f in ad["TransferInput"].split(",") if f.endswith("/persistjob-credentials")][0]
    assert pool.run("stat", "-c", "%a", cred).stdout.strip() == "600"
    for where, text in seen.items():
        assert text.strip() and secret not in text, "the secret key is in %s" % where
    assert joblog(bucket_store, ad["GlobalJobId"]).head().generation >= 1


def test_vacate_takes_final_checkpoint_and_next_run_resumes(pool, bucket_store):
    c = pool.submit("--store", bucket_store.url, "--lifetime", "10m", "--interval", "1h", "--vacate-grace", "20s",
                    "--name", "vacate", "--", PY_IN, COUNTER_IN, outdir=outdir())
    try:
        wait_for(lambda: (pool.ad(c, ["PersistRuns"]) or {}).get("PersistRuns") == 1, 120, "the first run")
        gid = pool.ad(c, ["GlobalJobId"])["GlobalJobId"]
        time.sleep(4)
        t0 = time.time()
        pool.run("condor_vacate_job", "%d.0" % c)
        wait_for(lambda: any(r["run"] == 1 and r.get("state") == "ended" for r in joblog(bucket_store, gid).runs()),
                 60, "run 1 to end")
        wait_for(lambda: (pool.ad(c, ["PersistRuns"]) or {}).get("PersistRuns", 0) >= 2, 120, "the second run")
    finally:
        pool.rm(c)
    runs = {r["run"]: r for r in joblog(bucket_store, gid).runs()}
    assert runs[1]["exit_code"] == 85 and runs[1]["reason"] == "evicted (SIGTERM)"
    assert runs[1]["commits"] == 1 and runs[1]["end"] - t0 < 20
    wait_for(lambda: "restored_generation" in runs.get(2, {}), 1, "run 2 record")
    assert runs[2]["restored_generation"] == 1


def test_crash_loop_is_held_and_released_with_backoff(pool, bucket_store):
    c = pool.submit("--store", bucket_store.url, "--name", "crashy", "--crash-limit", "2", "--release-base", "3s",
                    "--release-limit", "3", "--", PY_IN, COUNTER_IN, "--crash", outdir=outdir())
    attrs = ["JobStatus", "NumJobStarts", "NumHolds", "HoldReasonSubCode", "HoldReason"]
    try:
        first = wait_for(lambda: (lambda a: a if a and a["JobStatus"] == 5 else None)(pool.ad(c, attrs)), 120, "a hold")
        assert first["HoldReasonSubCode"] == 79 and "crash loop: payload exited 3" in first["HoldReason"]
        assert first["NumJobStarts"] == 2
        # released with backoff and held again, until the release limit
        final = wait_for(lambda: (lambda a: a if a and a["NumHolds"] >= 3 and a["JobStatus"] == 5 else None)(
            pool.ad(c, attrs)), 180, "three holds")
        time.sleep(15)
        after = pool.ad(c, attrs)
        assert after["JobStatus"] == 5 and after["NumHolds"] == 3, "not released past the limit: not re-run forever"
        assert after["NumJobStarts"] == final["NumJobStarts"] <= 5
    finally:
        pool.rm(c)


def test_bad_store_url_is_held_with_a_clear_reason(pool, bucket_store):
    c = pool.submit("--store", "s3://no-such-bucket-here/x", "--name", "badstore", "--", PY_IN, COUNTER_IN,
                    outdir=outdir())
    try:
        ad = wait_for(lambda: (lambda a: a if a and a["JobStatus"] == 5 else None)(
            pool.ad(c, ["JobStatus", "HoldReason", "HoldReasonSubCode", "NumJobStarts"])), 120, "a hold")
        assert ad["HoldReasonSubCode"] == 78
        assert "persistjob exit 78: S3 bucket 'no-such-bucket-here' does not exist" in ad["HoldReason"]
        time.sleep(8)
        assert pool.ad(c, ["NumJobStarts"])["NumJobStarts"] == 1, "held, not a crash loop"
    finally:
        pool.rm(c)


def test_try_later_is_held_then_released_after_a_delay_never_rerun_at_once(pool, bucket_store):
    """Exit 75 (here: the store does not answer) on HTCondor is a hold of its own subcode, released by the
    contract's periodic_release after a delay, then held again: no hot loop against a store that is down."""
    from tests.servers import free_ports

    bucket = bucket_store.url.split("/")[2]
    dead = "s3://%s/x?endpoint=http://127.0.0.1:%d" % (bucket, free_ports(1)[0])
    c = pool.submit("--store", dead, "--storage-timeout", "2s", "--retry-base", "3s", "--name", "later",
                    "--", PY_IN, COUNTER_IN, outdir=outdir())
    attrs = ["JobStatus", "NumJobStarts", "NumHolds", "HoldReasonCode", "HoldReasonSubCode", "HoldReason"]
    try:
        first = wait_for(lambda: (lambda a: a if a and a["JobStatus"] == 5 else None)(pool.ad(c, attrs)), 120, "a hold")
        assert (first["HoldReasonCode"], first["HoldReasonSubCode"], first["NumJobStarts"]) == (3, 75, 1), first
        assert "persistjob exit 75: storage unreachable" in first["HoldReason"], first
        again = wait_for(lambda: (lambda a: a if a and a["NumJobStarts"] >= 2 and a["NumHolds"] >= 2
                                  and a["JobStatus"] == 5 else None)(pool.ad(c, attrs)), 180, "a release and a second hold")
        assert again["HoldReasonSubCode"] == 75 and again["NumJobStarts"] == again["NumHolds"], again
    finally:
        pool.rm(c)


def test_duplicate_instance_only_one_commits_then_status_shows_it_without_a_flag(pool, bucket_store, tmp_path):
    """A refused duplicate that is gone is information for status, not a problem: it is shown
    (fenced notes, one incident) but not flagged, and status exits 0."""
    c = pool.submit("--store", bucket_store.url, "--lifetime", "10m", "--interval", "1s", "--name", "dup",
                    "--", PY_IN, COUNTER_IN, "--quiet", outdir=outdir())
    dup = None
    try:
        wait_for(lambda: (pool.ad(c, ["PersistGeneration"]) or {}).get("PersistGeneration", 0) >= 2, 120, "commits")
        gid = pool.ad(c, ["GlobalJobId"])["GlobalJobId"]
        # a disconnected duplicate: a second wrapper, by hand, with the job's GlobalJobId
        dup = subprocess.Popen([sys.executable, "-m", "persistjob", "run", "--job-id", gid, "--store", bucket_store.url,
                                "--checkpoint-dir", str(tmp_path / "dup"), "--interval", "1s", "--lease-check", "1s",
                                "--", sys.executable, COUNTER, "--quiet"], env=clean_env(bucket_store.env),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rc = dup.wait(timeout=120)
        assert rc == 75, dup.stderr.read()
        wait_for(lambda: (pool.ad(c, ["JobStatus"]) or {}).get("JobStatus") == 2, 60, "the job to run again")
        gen = pool.ad(c, ["PersistGeneration"])["PersistGeneration"]
        wait_for(lambda: pool.ad(c, ["PersistGeneration"])["PersistGeneration"] > gen, 60, "the job to commit again")
        recs = list(joblog(bucket_store, gid).records())
        assert commits_only_by_owner(recs), "no instance committed after it was superseded"
        st = pool.run("persistjob", "status", "--json", "--constraint", "ClusterId == %d" % c, check=False)
        view = json.loads(st.stdout)[0]
        assert view["fenced"] >= 1 and view["fenced_incidents"] == 1, view
        assert "FENCED" not in view["flags"] and st.returncode == (1 if view["flags"] else 0), view
    finally:
        if dup and dup.poll() is None:
            dup.kill()
        pool.rm(c)


def test_status_and_rm_purge(pool, bucket_store):
    od = outdir()
    good = pool.submit("--store", bucket_store.url, "--lifetime", "10m", "--interval", "1s", "--name", "good",
                       "--", PY_IN, COUNTER_IN, "--quiet", outdir=od)
    held = pool.submit("--store", "s3://no-such-bucket-here/x", "--name", "held", "--", PY_IN, COUNTER_IN, outdir=od)
    stalled = pool.submit("--store", bucket_store.url, "--mode", "signal", "--interval", "2s", "--name", "stalled",
                          "--", "/bin/sh", "-c", "trap '' USR1; while :; do sleep 1; done", outdir=od)
    shared_url = bucket_store.url.rsplit("/", 1)[0] + "/shared?dedup=store"  # chunks kept once for all its jobs
    shared = pool.submit("--store", shared_url, "--lifetime", "10m", "--interval", "1s", "--name", "shared",
                         "--", PY_IN, COUNTER_IN, "--quiet", outdir=od)
    try:
        wait_for(lambda: (pool.ad(good, ["PersistGeneration"]) or {}).get("PersistGeneration", 0) >= 2, 120, "commits")
        wait_for(lambda: (pool.ad(shared, ["PersistGeneration"]) or {}).get("PersistGeneration", 0) >= 1, 120,
                 "a commit to the shared store")
        wait_for(lambda: (pool.ad(held, ["JobStatus"]) or {}).get("JobStatus") == 5, 120, "the hold")
        wait_for(lambda: (pool.ad(stalled, ["JobStatus"]) or {}).get("JobStatus") == 2, 120, "stalled job running")
        time.sleep(6)
        st = pool.run("persistjob", "status", "--constraint", "ClusterId >= %d && ClusterId <= %d" % (good, shared),
                      check=False)
        assert st.returncode == 1
        lines = {}
        for ln in st.stdout.splitlines():  # one line per job
            if re.match(r"^\d+\.\d+ ", ln):
                assert ln.split()[0] not in lines, st.stdout
                lines[ln.split()[0]] = ln
        assert lines["%d.0" % good].rstrip().endswith("ok")
        assert "HELD" in lines["%d.0" % held] and "STALLED" in lines["%d.0" % stalled]
        assert lines["%d.0" % shared].rstrip().endswith("ok"), st.stdout
        assert "held: persistjob exit 78" in lines["%d.0" % held], st.stdout
        # a header, one line per job, and one line for the one shared store (a per-job store adds none)
        assert len(st.stdout.splitlines()) == 6, st.stdout
        assert st.stdout.splitlines()[-1] == ("store %s: chunks kept once for all its jobs (dedup=store); "
                                              "no gc pass running" % shared_url), st.stdout
        # the same view for Prometheus' textfile collector, parsed with prometheus_client's own parser
        from prometheus_client.parser import text_string_to_metric_families

        prom = pool.run("persistjob", "status", "--format", "prometheus", "--stats", "--constraint",
                        "ClusterId >= %d && ClusterId <= %d" % (good, stalled), check=False)
        everything = pool.run("persistjob", "status", "--format", "prometheus", "--constraint",
                              "ClusterId >= %d && ClusterId <= %d" % (good, shared), check=False)
        shares = {s.labels["store"]: s.value for f in text_string_to_metric_families(everything.stdout)
                  if f.name == "persistjob_store_shared_chunks" for s in f.samples}
        assert shares == {bucket_store.url: 0, shared_url: 1}, everything.stdout
        fams = {f.name: f for f in text_string_to_metric_families(prom.stdout)}
        flags = {(s.labels["job"], s.labels["flag"]) for s in fams["persistjob_job_flag"].samples}
        assert ("%d.0" % held, "HELD") in flags and ("%d.0" % stalled, "STALLED") in flags, prom.stdout
        assert [s.value for s in fams["persistjob_job_generation"].samples if s.labels["job"] == "%d.0" % good][0] >= 2
        assert sum(s.value for s in fams["persistjob_store_requests"].samples) > 0
        assert re.match(r"status: 3 jobs, \d+ store requests \([\d.]+ per job: ", prom.stderr), prom.stderr
        one = pool.run("persistjob", "status", "--json", "--constraint", "ClusterId == %d" % good, check=False)
        assert one.returncode == 0, one.stdout
        view = json.loads(one.stdout)[0]
        assert view["generation"] >= 2 and view["JobStatus"] == 2 and view["flags"] == []
        assert view["store_shared_chunks"] is False and "store_gc_since" not in view
        gid = view["GlobalJobId"]
        assert list(bucket_store.backend().list(JobLog(bucket_store.backend(), gid).keys.root))
        rm = pool.run("persistjob", "rm", "--purge", str(good), timeout=300)
        assert "removed 1 persistent job" in rm.stdout and "purged" in rm.stdout
        left = JobLog(bucket_store.backend(), gid)
        assert [o.key for o in bucket_store.backend().list(left.keys.root)] == [left.keys.log(left.head().seq)]
        assert left.head().kind == "removed", "only the removal record stays, as a tombstone"
        assert pool.ad(good, ["JobStatus"]) is None
    finally:
        for cl in (good, held, stalled, shared):
            pool.rm(cl)


def test_cron_schedule_runs_each_minute_never_twice_with_state_carried(pool, bucket_store):
    c = pool.submit("--store", bucket_store.url, "--name", "cron", "--cron", "* * * * *", "--cron-window", "50s",
                    "--", PY_IN, COUNTER_IN, "--steps", "5", "--step", "0.1", outdir=outdir())
    try:
        wait_for(lambda: (pool.ad(c, ["NumJobStarts"]) or {}).get("NumJobStarts", 0) >= 2 and
                 (pool.ad(c, ["JobStatus"]) or {}).get("JobStatus") == 1, 200, "two scheduled runs")
        gid = pool.ad(c, ["GlobalJobId"])["GlobalJobId"]
    finally:
        pool.rm(c)
    runs = sorted(joblog(bucket_store, gid).runs(), key=lambda r: r["run"])
    assert len(runs) >= 2
    assert [r["exit_code"] for r in runs[:2]] == [0, 0]
    assert int(runs[0]["start"] // 60) != int(runs[1]["start"] // 60), "one run per minute"
    assert runs[1]["start"] > runs[0]["end"], "never twice at once"
    assert runs[1]["restored_generation"] == runs[0]["generation"] >= 1


def test_remote_schedd_with_idtokens(pool, bucket_store, tmp_path):
    """Submit and query from outside the pool's file system (PyPI htcondor2 bindings on the host):
    FS authentication is impossible there, so this goes through IDTOKENS."""
    tokens = tmp_path / "tokens"
    tokens.mkdir(mode=0o700)
    tok = subprocess.run([SANDBOX, "token"], capture_output=True, text=True, check=True).stdout.strip()
    (tokens / "pj.token").write_text(tok + "\n")
    (tokens / "pj.token").chmod(0o600)
    env = clean_env(dict(bucket_store.env, CONDOR_CONFIG="/dev/null", _CONDOR_SEC_TOKEN_DIRECTORY=str(tokens),
                         _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS="IDTOKENS"))
    base = [sys.executable, "-m", "persistjob"]
    remote = ["--pool", "127.0.0.1:9618", "--schedd", "localhost"]
    r = subprocess.run(base + ["submit", *remote, "--store", bucket_store.url, "--name", "remote", "--lifetime", "3s",
                               "--interval", "1s", *STORE_ENV, "--initialdir", "/tmp", "--output-dir", "/tmp",
                               "--wrapper", "/opt/persistjob-venv/bin/persistjob", "--", PY_IN, COUNTER_IN],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    c = int(re.search(r"submitted to cluster (\d+)", r.stdout).group(1))
    try:
        wait_for(lambda: (pool.ad(c, ["NumJobStarts"]) or {}).get("NumJobStarts", 0) >= 2, 120, "two runs")
        assert pool.ad(c, ["Owner"])["Owner"] == "pj"
        st = subprocess.run(base + ["status", *remote, "--json", "--constraint", "ClusterId == %d" % c], env=env,
                            capture_output=True, text=True, timeout=120)
        view = json.loads(st.stdout)[0]
        assert view["generation"] >= 1 and view["runs"] >= 1
        # without a valid token the schedd refuses to take jobs: one line, exit 78, nothing queued
        empty = tmp_path / "none"
        empty.mkdir()
        bad = subprocess.run(base + ["submit", *remote, "--store", bucket_store.url, "--name", "badtoken",
                                     "--initialdir", "/tmp", "--", "/bin/true"],
                             env=dict(env, _CONDOR_SEC_TOKEN_DIRECTORY=str(empty)), capture_output=True, text=True,
                             timeout=120)
        assert bad.returncode == 78 and "refused our credentials" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        assert pool.ads('PersistName == "badtoken"', ["ClusterId"]) == []
    finally:
        pool.rm(c)


def test_wq_workers_as_persistent_condor_jobs(pool, tmp_path):
    """A pilot factory without cron: Work Queue workers kept alive by HTCondor (on_exit_remove = false).

    Manager, shims and workers all run in the pool's chroot, so that they share one CCTools release
    (a 7.14 worker cannot talk to the host's 8.0-dev manager)."""
    from tests.servers import free_ports

    root = os.environ.get("PJ_CONDOR_SANDBOX", "/var/cache/persistjob/condor-trixie")
    home = "/home/pj/wqc-" + uuid.uuid4().hex[:6]
    port = free_ports(1)[0]
    pool.run("mkdir", "-p", home)
    with open(root + home + "/agent.sh", "w") as f:
        f.write("#!/bin/sh\necho \"agent CONDOR_ID=$CONDOR_ID on $(hostname)\"\nsleep 2\n")
    os.chmod(root + home + "/agent.sh", 0o755)
    mpid = int(pool.run("sh", "-c", "persistjob wq manager --port %d --work-dir %s/awq > %s/manager.log 2>&1 & echo $!"
                        % (port, home, home)).stdout.strip())
    cluster = None
    shim = "eval \"$(persistjob wq env --work-dir %s/awq)\" && cd %s && " % (home, home)
    try:
        wait_for(lambda: os.path.exists(root + home + "/awq/manager.json"), 30, "the manager")
        r = pool.run("env", "WQ_MASTER=127.0.0.1:%d" % port, "WQ_WORKDIR=%s/w" % home, "WQ_IDLETIMEOUT=5",
                     "persistjob", "wq", "workers", "start-workers", "--via", "condor", "--count", "2")
        cluster = int(re.search(r"cluster (\d+)", r.stdout).group(1))
        sub = ("executable = %s/agent.sh\noutput = out.$(Cluster).$(Process)\nerror = err.$(Cluster).$(Process)\n"
               "environment = CONDOR_ID=$(Cluster).$(Process)\nqueue 4\n" % home)
        r = subprocess.run([SANDBOX, "run", "--", "sh", "-c", shim + "condor_submit"], input=sub, capture_output=True,
                           text=True, env=clean_env({}), timeout=60)
        assert r.stdout == "Submitting job(s)....\n4 job(s) submitted to cluster 1.\n", r.stdout + r.stderr
        count = lambda: int(pool.run("sh", "-c", shim + "condor_q -format '%s\\n' Owner | wc -l").stdout)  # noqa: E731
        wait_for(lambda: count() == 0, 180, "the pilots to run on the condor workers")
        for i in range(4):
            assert "agent CONDOR_ID=1.%d" % i in open(root + home + "/out.1.%d" % i).read()
        # the workers exit after 5 s idle; HTCondor starts them again (no cron, no daemon)
        wait_for(lambda: (pool.ad(cluster, ["NumJobStarts"]) or {}).get("NumJobStarts", 0) >= 2, 120, "a restart")
        ad = pool.ad(cluster, ["JobStatus", "PersistName"])
        assert ad["PersistName"] == "wq-worker" and ad["JobStatus"] in (1, 2)
    finally:
        if cluster is not None:
            pool.rm(cluster)
        try:
            os.kill(mpid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_boinc_launcher_as_a_persistent_condor_job(pool, bucket_store, tmp_path):
    """examples/boinc on the real pool: the BOINC client (trixie's boinc-client, offline) runs, quits
    cleanly before every commit, and keeps one host identity: md5 of the job's GlobalJobId."""
    import hashlib

    c = pool.submit("--store", bucket_store.url, "--mode", "exit-code", "--lifetime", "10s", "--vacate-grace", "30s",
                    "--name", "boinc", "--", PY_IN, SRC_IN_CHROOT + "/examples/boinc/boinc_launcher.py", "--offline",
                    "--checkpoint-every", "4", "--quit-timeout", "20", outdir=outdir())
    try:
        wait_for(lambda: (pool.ad(c, ["NumJobStarts"]) or {}).get("NumJobStarts", 0) >= 3, 240, "three runs")
        gid = pool.ad(c, ["GlobalJobId"])["GlobalJobId"]
    finally:
        pool.rm(c)
    runs = sorted(joblog(bucket_store, gid).runs(), key=lambda r: r["run"])
    ended = [r for r in runs if r.get("exit_code") == 85]
    assert len(ended) >= 2 and ended[1]["restored_generation"] == ended[0]["generation"] > 0
    dest = tmp_path / "boinc-state"
    r = bucket_store.cli("checkpoint", "restore", "--store", bucket_store.url, "--job-id", gid, "--dest", str(dest))
    assert r.returncode == 0, r.stderr
    cpid = re.findall(r"<host_cpid>([0-9a-f]+)</host_cpid>", (dest / "client_state.xml").read_text())
    assert cpid == [hashlib.md5(gid.encode()).hexdigest()]
    log = (dest / "stdoutdae.txt").read_text()
    starts = log.count("Initialization completed")
    # state is committed only after the client quit: every start in the committed history has its clean exit,
    # and the history spans several runs (the log travels with the state)
    assert starts >= 2 and log.count("Exiting") == starts, log[-2000:]


def test_the_pool_listens_on_loopback_only(pool):
    """ENABLE_IPV6 = False, NETWORK_INTERFACE = 127.0.0.1: no daemon of the sandbox pool listens on any
    other address (without them shared_port also bound the host's non-loopback IPv6 address)."""
    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    condor = [ln for ln in out.splitlines() if "condor_" in ln]
    assert condor, out
    local = [ln.split()[3] for ln in condor]
    assert all(a.startswith("127.0.0.1:") for a in local), condor


def _ancestor(pid, name):
    """The nearest ancestor of pid whose command name is name (None if there is none)."""
    while pid > 1:
        try:
            with open("/proc/%d/stat" % pid) as f:
                stat = f.read()
        except OSError:
            return None
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if comm == name:
            return pid
        pid = int(rest[1])
    return None


def test_killed_starter_is_a_lost_run_not_a_payload_crash(pool, bucket_store):
    """kill -9 of the job's condor_starter (infrastructure trouble on the node): the run is counted as lost,
    the crash streak stays 0, the job runs again and resumes, and status shows the lost run."""
    c = pool.submit("--store", bucket_store.url, "--lifetime", "10m", "--interval", "1s", "--name", "starter",
                    "--", PY_IN, COUNTER_IN, "--quiet", outdir=outdir())
    try:
        wait_for(lambda: (pool.ad(c, ["PersistGeneration"]) or {}).get("PersistGeneration", 0) >= 2, 120, "commits")
        gid = pool.ad(c, ["GlobalJobId"])["GlobalJobId"]
        claim = [r for r in joblog(bucket_store, gid).records() if r.kind == "claim"][-1]
        starter = _ancestor(int(claim.data["pid"]), "condor_starter")  # the chroot shares the host's PIDs
        assert starter, "no condor_starter above the wrapper (pid %s)" % claim.data["pid"]
        os.kill(starter, signal.SIGKILL)
        wait_for(lambda: len([r for r in joblog(bucket_store, gid).records() if r.kind == "claim"]) >= 2, 300,
                 "the job to run again after its starter was killed")
        gen = joblog(bucket_store, gid).head().generation
        wait_for(lambda: joblog(bucket_store, gid).head().generation > gen, 120, "the new run to commit")
        view = json.loads(pool.run("persistjob", "status", "--json", "--constraint", "ClusterId == %d" % c,
                                   check=False).stdout)[0]
        runs = {r["run"]: r for r in joblog(bucket_store, gid).runs()}
    finally:
        pool.rm(c)
    assert view["crash_streak"] == 0 and "CRASHLOOP" not in view["flags"] and view["JobStatus"] == 2, view
    # the killed run either vanished (no end record: counted lost by the next claim) or recorded that its
    # payload was killed from outside; never "payload failed"
    first = runs[1]
    print("starter killed: run 1 %s, lost runs %d" % ({k: first.get(k) for k in ("state", "exit_code", "reason")},
                                                      view["lost_runs"]))
    assert first.get("exit_code") != 1 and "payload failed" not in (first.get("reason") or ""), first
    assert view["lost_runs"] >= 1, view
    assert runs[2]["restored_generation"] >= 2


def test_status_answers_while_the_store_is_stopped(pool, bucket_store):
    """SIGSTOP of the S3 server (it accepts connections and never answers): status answers within its
    --timeout with STORE? for the job, never a negative age, and STALLED once the running job has gone two
    intervals plus its commit time without a commit (from the ad's PersistLastCommit, as the store is silent)."""
    c = pool.submit("--store", bucket_store.url, "--lifetime", "10m", "--interval", "2s", "--name", "silent",
                    "--", PY_IN, COUNTER_IN, "--quiet", outdir=outdir())
    server = bucket_store.server.proc
    stopped = False
    try:
        wait_for(lambda: (pool.ad(c, ["PersistLastCommit"]) or {}).get("PersistLastCommit"), 120, "a commit in the ad")
        os.killpg(server.pid, signal.SIGSTOP)
        stopped = True

        def stalled():
            r = pool.run("persistjob", "status", "--json", "--timeout", "3", "--constraint", "ClusterId == %d" % c,
                         check=False, timeout=90)  # 90 s: a status that waits for the store fails here
            view = json.loads(r.stdout)[0]
            assert "STORE?" in view["flags"] and r.returncode == 1, (view, r.stderr)
            assert all(not str(x).startswith("-") for x in re.findall(r"(-?\d+)s ago", r.stderr + r.stdout))
            return view if "STALLED" in view["flags"] else None

        view = wait_for(stalled, 120, "STALLED while the store is stopped")
        table = pool.run("persistjob", "status", "--timeout", "3", "--constraint", "ClusterId == %d" % c,
                         check=False, timeout=90)
        assert "STORE?" in table.stdout and "STALLED" in table.stdout and not re.search(r"-\d+s", table.stdout)
        assert view["JobStatus"] == 2
    finally:
        if stopped:
            os.killpg(server.pid, signal.SIGCONT)
        pool.rm(c)


def test_mode_criu_job_keeps_its_memory_across_a_vacate(pool, bucket_store, tmp_path):
    """A payload whose state is only in memory, as an HTCondor job of an ordinary user (no root, no
    capabilities): criu runs in the job's own user namespace (the pool's daemons are pivot_root'ed, not
    chrooted, so the kernel allows one). condor_vacate_job mid-run: the final dump is committed, the next
    start restores the tree, and the count goes on to the end without a gap; the job then leaves the queue,
    its directory on the node removed (the final generation in the store has the whole count)."""
    import hashlib

    root = os.environ.get("PJ_CONDOR_SANDBOX", "/var/cache/persistjob/condor-trixie")
    c = pool.submit("--store", bucket_store.url, "--mode", "criu", "--lifetime", "10m", "--interval", "1s",
                    "--vacate-grace", "30s", "--until-done", "--name", "criu",
                    "--", PY_IN, SRC_IN_CHROOT + "/examples/criu/memory_counter.py", "--finish-at", "600",
                    outdir=outdir())
    try:
        wait_for(lambda: (pool.ad(c, ["PersistGeneration"]) or {}).get("PersistGeneration", 0) >= 2, 180, "commits")
        gid = pool.ad(c, ["GlobalJobId"])["GlobalJobId"]
        pool.run("condor_vacate_job", "%d.0" % c)
        wait_for(lambda: pool.ad(c, ["JobStatus"]) is None, 300, "the job to count to the end and leave the queue")
    finally:
        pool.rm(c)
    runs = sorted(joblog(bucket_store, gid).runs(), key=lambda r: r["run"])
    assert runs[0]["exit_code"] == 85 and runs[0]["reason"] == "evicted (SIGTERM)", runs[0]
    assert runs[-1]["exit_code"] == 0 and len(runs) >= 2, runs
    assert all(x["restored_generation"] == p["generation"] for p, x in zip(runs, runs[1:])), runs
    base = root + "/tmp/persistjob-criu/%s" % hashlib.sha256(gid.encode()).hexdigest()[:16]
    r = bucket_store.cli("checkpoint", "restore", "--store", bucket_store.url, "--job-id", gid,
                         "--dest", str(tmp_path / "final"))
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "final" / ".persistjob-payload.out") as f:
        counts = [int(line.split()[1]) for line in f if line.startswith("count ")]
    assert counts == list(range(1, 601)), "restored, not restarted: %s..." % counts[:5]
    assert not os.path.exists(base + "/work") and os.path.exists(base + "/lock"), "the payload's exit 0, committed"
    assert os.stat(base + "/lock").st_uid == pool_uid(root), "the job's own user, not root"


def pool_uid(root):
    with open(root + "/etc/passwd") as f:
        return [int(line.split(":")[2]) for line in f if line.startswith("pj:")][0]
