"""Persistent jobs on a real Slurm cluster (scripts/slurm-sandbox: Debian's slurmctld, slurmd and munge on
127.0.0.1), store on a real SeaweedFS.  Jobs are submitted with `persistjob submit --scheduler slurm`."""

import glob
import json
import os
import re
import subprocess
import sys
import time

import pytest

from persistjob.repo.log import JobLog
from tests.conftest import COUNTER, REPO, clean_env, wait_for
from tests.servers import is_local_peer, local_addresses

pytestmark = pytest.mark.slurm

SANDBOX = os.path.join(REPO, "scripts", "slurm-sandbox")
STATE = os.environ.get("PJ_SLURM_SANDBOX", "/var/tmp/persistjob-slurm")
CONF = os.path.join(STATE, "etc", "slurm.conf")


class Cluster:
    def __init__(self, env):
        self.env = clean_env(dict(env, SLURM_CONF=CONF))

    def run(self, *cmd, check=True, timeout=120, cwd=None):
        r = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if check and r.returncode != 0:
            raise AssertionError("%s exited %d:\n%s%s" % (" ".join(cmd), r.returncode, r.stdout, r.stderr))
        return r

    def pj(self, *args, check=True, timeout=300, cwd=None):
        return self.run(sys.executable, "-m", "persistjob", *args, check=check, timeout=timeout, cwd=cwd)

    def submit(self, store, outdir, *args, env=None):
        saved, self.env = self.env, dict(self.env, **(env or {}))
        try:
            return self._submit(store, outdir, *args)
        finally:
            self.env = saved

    def _submit(self, store, outdir, *args):
        r = self.pj("submit", "--scheduler", "slurm", "--store", store, "--getenv", "AWS_ENDPOINT_URL_S3",
                    "--getenv", "AWS_DEFAULT_REGION", "--getenv", "AWS_EC2_METADATA_DISABLED", "--getenv",
                    "PERSISTJOB_CRIU", "--output-dir",
                    str(outdir), *args, cwd=str(outdir))
        return re.search(r"as job (\d+)", r.stdout).group(1)

    def job(self, jid):
        """scontrol show job, as a dict (None once Slurm has forgotten the job)."""
        r = self.run("scontrol", "show", "job", "-o", jid, check=False)
        if r.returncode != 0:
            return None
        return dict(re.findall(r"(\w+)=(\S*)", r.stdout))

    def comment(self, jid):
        return self.run("squeue", "-h", "-j", jid, "-o", "%k", check=False).stdout.strip()

    def gid(self, jid):
        """The persistjob job ID of a Slurm job, from its comment's nonce."""
        nonce = re.search(r"\bid=(\w+)", self.comment(jid)).group(1)
        return "slurm#pjsandbox#%s#%s" % (jid, nonce)

    def cancel(self, jid):
        self.run("scancel", jid, check=False)


@pytest.fixture(scope="session")
def cluster(seaweed):
    if os.geteuid() != 0:
        pytest.fail("the Slurm sandbox runs its daemons as root: run make test as root")
    was_up = "slurm-sandbox: running: slurmctld" in subprocess.run([SANDBOX, "status"], capture_output=True, text=True).stderr
    if not was_up:
        subprocess.run([SANDBOX, "down", "--wipe"], capture_output=True, timeout=120)
    try:
        subprocess.run([SANDBOX, "up"], check=True, timeout=600)
    except BaseException:
        if not was_up:
            subprocess.run([SANDBOX, "down"], timeout=120)
        raise
    yield Cluster(seaweed.env())
    if not was_up:
        subprocess.run([SANDBOX, "down", "--wipe"], check=True, timeout=120)


@pytest.fixture
def store(weed_bucket):
    return "s3://%s/jobs" % weed_bucket


def log_of(seaweed, store, gid):
    from tests.conftest import Store

    return JobLog(Store("s3", store, seaweed.env(), seaweed).backend(), gid)


def test_job_runs_three_times_with_one_job_id_resuming_from_s3(cluster, seaweed, store, tmp_path):
    jid = cluster.submit(store, tmp_path, "--lifetime", "4s", "--interval", "1s", "--name", "three",
                         "--", "python3", COUNTER, "--quiet")
    try:
        gid = cluster.gid(jid)
        wait_for(lambda: len(log_of(seaweed, store, gid).runs()) >= 3, 240, "three runs")
        # read while the job is queued: once cancelled, squeue forgets it after MinJobAge
        said = wait_for(lambda: (lambda c: c if "gen=" in c else None)(cluster.comment(jid)), 60,
                        "the generation in the job's comment")
        job = cluster.job(jid)
        assert int(job["Restarts"]) >= 2 and job["JobId"] == jid
    finally:
        cluster.cancel(jid)
    runs = sorted(log_of(seaweed, store, gid).runs(), key=lambda r: r["run"])
    assert all(r["job_id"] == gid for r in runs)
    for prev, nxt in zip(runs, runs[1:]):
        if prev.get("exit_code") == 85:
            assert nxt["restored_generation"] == prev["generation"] > 0, (prev, nxt)
    assert sum(1 for r in runs if r.get("exit_code") == 85) >= 2
    assert "run again: scontrol requeue" in open(tmp_path / ("three.%s.err" % jid)).read()
    # each run works in its own scratch directory, never in the shared submit directory
    assert not (tmp_path / "persistjob-checkpoint").exists()
    wait_for(lambda: not glob.glob("/tmp/persistjob-slurm-%s.*" % jid), 60, "the last run to remove its scratch directory")
    fields = dict(w.split("=", 1) for w in said.split()[1:])
    assert fields["store"] == store and int(fields["gen"]) >= 1 and fields["name"] == "three"


def test_scancel_leaves_a_final_checkpoint_and_ends_the_job(cluster, seaweed, store, tmp_path):
    """persistjob rm --scheduler slurm: scancel's TERM gets a final checkpoint, and the job is not requeued."""
    jid = cluster.submit(store, tmp_path, "--lifetime", "10m", "--interval", "1h", "--vacate-grace", "20s",
                         "--name", "cancel", "--", "python3", COUNTER, "--quiet")
    gid = cluster.gid(jid)
    wait_for(lambda: any(r["run"] == 1 for r in log_of(seaweed, store, gid).runs()), 120, "the first run")
    time.sleep(2)
    rm = cluster.pj("rm", "--scheduler", "slurm", jid)
    assert "removed 1 persistent job" in rm.stdout
    runs = {r["run"]: r for r in log_of(seaweed, store, gid).runs()}
    assert runs[1]["exit_code"] == 85 and runs[1]["commits"] == 1 and "SIGTERM" in runs[1]["reason"], runs[1]
    assert 2 not in runs, "scancel must not requeue"
    assert log_of(seaweed, store, gid).head().kind == "removed"
    assert (cluster.job(jid) or {}).get("JobState", "CANCELLED") == "CANCELLED"


def test_time_limit_warning_leaves_a_final_checkpoint_and_requeues(cluster, seaweed, store, tmp_path):
    """A time limit shorter than the lifetime: Slurm's USR1 warning (--signal=B:USR1@N) gets a final
    checkpoint and a requeue before the limit, never a TIMEOUT (which Slurm would not requeue)."""
    jid = cluster.submit(store, tmp_path, "--lifetime", "1h", "--interval", "1h", "--vacate-grace", "5s",
                         "--time-limit", "2m", "--name", "limit", "--", "python3", COUNTER, "--quiet")
    gid = cluster.gid(jid)
    try:
        wait_for(lambda: len(log_of(seaweed, store, gid).runs()) >= 2, 300, "a second run after the warning")
    finally:
        cluster.cancel(jid)
    runs = {r["run"]: r for r in log_of(seaweed, store, gid).runs()}
    assert runs[1]["exit_code"] == 85 and runs[1]["commits"] == 1, runs[1]
    assert runs[2]["restored_generation"] == runs[1]["generation"] >= 1
    assert "TIMEOUT" not in open(os.path.join(STATE, "log", "jobcomp.txt")).read().split("JobId=%s " % jid, 1)[-1] \
        .split("\n", 1)[0]


def runs_of(errfile):
    """(start, end, exit code) of each run of the wrapper, from the batch script's lines in the job's
    error file (runs that found it too early and requeued at once did not start the wrapper)."""
    out, start = [], None
    for line in open(errfile):
        m = re.match(r"persistjob-slurm: run (started|ended) (\d+)(?:, exit (\d+))?", line)
        if m and m.group(1) == "started":
            start = int(m.group(2))
        elif m and start is not None:
            out.append((start, int(m.group(2)), int(m.group(3))))
            start = None
    return out


def test_crash_loop_is_released_with_back_off_then_held_with_the_reason(cluster, seaweed, store, tmp_path):
    """79: run again after --release-base (not at once), and after --release-limit releases held, the
    wrapper's reason in the comment and in status."""
    jid = cluster.submit(store, tmp_path, "--crash-limit", "2", "--release-limit", "1", "--release-base", "6s",
                         "--name", "crash", "--", "/bin/sh", "-c", "echo boom >&2; exit 3")
    try:
        wait_for(lambda: (cluster.job(jid) or {}).get("Reason") == "job_requeued_in_held_state", 240, "the hold")
        runs = runs_of(tmp_path / ("crash.%s.err" % jid))
        # runs 1 and 2 fail (the second exits 79), the release waits 6 s, run 3 fails again: held
        assert [r[2] for r in runs] == [1, 79, 79] and runs[2][0] - runs[1][1] >= 5, runs
        st = cluster.pj("status", "--scheduler", "slurm", "--json", "--constraint", jid, check=False)
        view = json.loads(st.stdout)[0]
        assert st.returncode == 1 and "HELD" in view["flags"] and "CRASHLOOP" in view["flags"], view
        assert "crash" in cluster.comment(jid) and "err=" in cluster.comment(jid)
        table = cluster.pj("status", "--scheduler", "slurm", "--constraint", jid, check=False).stdout
        assert re.search(r"^%s .*HELD.*held: .*crash" % jid, table, re.M) and len(table.splitlines()) == 2, table
    finally:
        cluster.cancel(jid)


def test_a_duplicate_wrapper_never_commits_after_it_is_superseded(cluster, seaweed, store, tmp_path):
    jid = cluster.submit(store, tmp_path, "--lifetime", "10m", "--interval", "1s", "--name", "dup",
                         "--", "python3", COUNTER, "--quiet")
    dup = None
    try:
        gid = cluster.gid(jid)
        wait_for(lambda: log_of(seaweed, store, gid).head().generation >= 2, 120, "commits")
        dup = subprocess.Popen([sys.executable, "-m", "persistjob", "run", "--job-id", gid, "--store", store,
                                "--checkpoint-dir", str(tmp_path / "dup"), "--interval", "1s", "--lease-check", "1s",
                                "--", sys.executable, COUNTER, "--quiet"], env=clean_env(seaweed.env()),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert dup.wait(timeout=120) == 75
        gen = log_of(seaweed, store, gid).head().generation
        wait_for(lambda: log_of(seaweed, store, gid).head().generation > gen, 180, "the Slurm job to commit again")
    finally:
        if dup and dup.poll() is None:
            dup.kill()
        cluster.cancel(jid)
    owner = None
    for r in log_of(seaweed, store, gid).records():
        if r.kind == "claim":
            owner = (r.data.get("host"), r.data.get("pid"))
        else:
            assert (r.data.get("host"), r.data.get("pid")) == owner, "a superseded instance wrote %s" % r.kind


def test_slurmctld_restart_loses_nothing(cluster, seaweed, store, tmp_path):
    """Pending and running jobs keep their IDs and restart counts across a controller restart, and the
    running one goes on committing."""
    running = cluster.submit(store, tmp_path, "--lifetime", "4s", "--interval", "1s", "--name", "ctld",
                             "--", "python3", COUNTER, "--quiet")
    pending = cluster.submit(store, tmp_path, "--name", "ctldheld", "--", "python3", COUNTER, "--quiet")
    cluster.run("scontrol", "hold", pending)
    try:
        gid = cluster.gid(running)
        wait_for(lambda: int((cluster.job(running) or {}).get("Restarts", 0)) >= 1, 180, "a requeue")
        before = {j: cluster.job(j) for j in (running, pending)}
        subprocess.run([SANDBOX, "restart-ctld"], check=True, timeout=120)
        after = {j: cluster.job(j) for j in (running, pending)}
        assert int(after[running]["Restarts"]) >= int(before[running]["Restarts"])
        assert after[pending]["JobState"] == "PENDING" and after[pending]["Reason"] in ("JobHeldUser", "JobHeldAdmin")
        assert cluster.gid(pending) and cluster.gid(running)
        gen = log_of(seaweed, store, gid).head().generation
        wait_for(lambda: log_of(seaweed, store, gid).head().generation > gen + 2, 180, "commits after the restart")
        wait_for(lambda: int(cluster.job(running)["Restarts"]) > int(before[running]["Restarts"]), 180,
                 "a requeue after the restart")
    finally:
        cluster.cancel(running)
        cluster.cancel(pending)


def test_status_and_rm_purge(cluster, seaweed, store, tmp_path):
    jid = cluster.submit(store, tmp_path, "--lifetime", "10m", "--interval", "1s", "--name", "st",
                         "--", "python3", COUNTER, "--quiet")
    gid = cluster.gid(jid)
    try:
        wait_for(lambda: log_of(seaweed, store, gid).head().generation >= 2, 120, "commits")
        st = cluster.pj("status", "--scheduler", "slurm", "--json", "--constraint", jid, check=False)
        view = json.loads(st.stdout)[0]
        assert st.returncode == 0 and view["flags"] == [] and view["JobStatus"] == 2, view
        assert view["GlobalJobId"] == gid and view["generation"] >= 2
        table = cluster.pj("status", "--scheduler", "slurm").stdout
        assert re.search(r"^%s\s+st\s+Running\s+1\s+1\s+0\s+\d+\s+\d+s ago\s+ok$" % jid, table, re.M), table
    finally:
        rm = cluster.pj("rm", "--scheduler", "slurm", "--purge", jid, check=False)
    assert rm.returncode == 0 and "purged" in rm.stdout, rm.stdout + rm.stderr
    log = log_of(seaweed, store, gid)
    assert log.head().kind == "removed"


def test_secrets_stay_out_of_the_script_and_the_job(cluster, seaweed, store, tmp_path):
    secret = seaweed.env()["AWS_SECRET_ACCESS_KEY"]
    jid = cluster.submit(store, tmp_path, "--lifetime", "3s", "--interval", "1s", "--name", "sec",
                         "--", "python3", COUNTER, "--quiet")
    try:
        gid = cluster.gid(jid)
        wait_for(lambda: log_of(seaweed, store, gid).head().generation >= 1, 120, "a commit")
        script = cluster.run("scontrol", "write", "batch_script", jid, "-").stdout
        shown = cluster.run("scontrol", "show", "job", "-d", jid).stdout
    finally:
        cluster.cancel(jid)
    assert "--export=NONE" in script and "AWS_SHARED_CREDENTIALS_FILE=" in script
    for where, text in (("batch script", script), ("scontrol show job", shown)):
        assert secret not in text, "the secret key is in the %s" % where


def test_the_cluster_listens_on_loopback_only(cluster):
    local = local_addresses()
    out = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True).stdout
    mine = [ln for ln in out.splitlines() if re.search(r'"(slurmctld|slurmd|munged)"', ln)]
    assert mine and all(ln.split()[3].startswith("127.0.0.1:") for ln in mine), mine
    conns = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True).stdout
    for ln in conns.splitlines():
        if re.search(r'"(slurmctld|slurmd|munged)"', ln):
            assert is_local_peer(ln.split()[4], local), ln


def test_try_later_is_requeued_with_a_doubling_delay(cluster, seaweed, tmp_path):
    """75 (the store does not answer): never an immediate re-run; the begin time moves --retry-base, then twice
    that, ahead."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = "http://127.0.0.1:%d" % sock.getsockname()[1]  # nothing listens once the socket is closed
    jid = cluster.submit("s3://nobucket/jobs", tmp_path, "--storage-timeout", "2s", "--retry-base", "4s",
                         "--name", "later", "--", "python3", COUNTER, env={"AWS_ENDPOINT_URL_S3": dead})
    err = tmp_path / ("later.%s.err" % jid)
    try:
        wait_for(lambda: err.exists() and len(runs_of(err)) >= 3, 300, "three runs")
    finally:
        cluster.cancel(jid)
    runs = runs_of(err)
    assert [r[2] for r in runs[:3]] == [75, 75, 75], runs
    assert runs[1][0] - runs[0][1] >= 3 and runs[2][0] - runs[1][1] >= 7, runs  # 4 s, then 8 s (second granularity)


def test_a_site_that_requeues_on_85_is_used(cluster, seaweed, store, tmp_path):
    """With RequeueExit=85 in the site's slurm.conf the job exits 85 and Slurm requeues it; without, the job
    requeues itself. Both keep the job ID and count restarts."""
    conf = open(CONF).read()
    with open(CONF, "a") as f:
        f.write("RequeueExit=85\n")
    cluster.run("scontrol", "reconfigure")
    try:
        wait_for(lambda: "85" in cluster.run("scontrol", "show", "config").stdout.split("RequeueExit", 1)[1].split("\n")[0],
                 30, "RequeueExit=85 in force")
        jid = cluster.submit(store, tmp_path, "--lifetime", "3s", "--interval", "1s", "--name", "rq85",
                             "--", "python3", COUNTER, "--quiet")
        try:
            gid = cluster.gid(jid)
            wait_for(lambda: len(log_of(seaweed, store, gid).runs()) >= 3, 240, "three runs")
            assert int(cluster.job(jid)["Restarts"]) >= 2
        finally:
            cluster.cancel(jid)
        err = open(tmp_path / ("rq85.%s.err" % jid)).read()
        assert "run again: exit 85 (RequeueExit)" in err and "scontrol requeue" not in err
    finally:
        with open(CONF, "w") as f:
            f.write(conf)
        cluster.run("scontrol", "reconfigure")


def test_preemption_gets_a_final_checkpoint_and_slurm_requeues(cluster, seaweed, store, tmp_path):
    """A job of the higher-tier partition needs every core: ours is preempted (PreemptMode=REQUEUE: TERM,
    then SIGKILL after GraceTime), takes its final checkpoint, and Slurm requeues it; the next run resumes."""
    jid = cluster.submit(store, tmp_path, "--lifetime", "10m", "--interval", "1h", "--vacate-grace", "15s",
                         "--name", "preempt", "--", "python3", COUNTER, "--quiet")
    big = None
    try:
        gid = cluster.gid(jid)
        wait_for(lambda: any(r["run"] == 1 for r in log_of(seaweed, store, gid).runs()), 120, "the first run")
        cores = cluster.run("sinfo", "-h", "-N", "-o", "%c").stdout.split()[0]
        big = cluster.run("sbatch", "--parsable", "-p", "high", "-c", cores, "--wrap", "sleep 3",
                          "-o", "/dev/null").stdout.strip()
        wait_for(lambda: len(log_of(seaweed, store, gid).runs()) >= 2, 240, "our job to run again after the preemption")
    finally:
        cluster.cancel(jid)
        if big:
            cluster.cancel(big)
    runs = {r["run"]: r for r in log_of(seaweed, store, gid).runs()}
    assert runs[1]["exit_code"] == 85 and runs[1]["commits"] == 1 and "SIGTERM" in runs[1]["reason"], runs[1]
    assert runs[2]["restored_generation"] == runs[1]["generation"] >= 1


MEMORY_COUNTER = r"""
import os, sys, time
blob = bytearray(os.urandom(1 << 20)) * 50   # 50 MB resident, never in a file
n = 0
while True:
    n += 1
    print("count", n, flush=True)
    if n >= int(sys.argv[1]):
        sys.exit(0)
    time.sleep(0.05)
"""


def test_mode_criu_carries_memory_across_requeues(cluster, seaweed, store, tmp_path):
    """--mode criu under Slurm: the job's payload keeps its count only in memory; CRIU's images ride in the
    store from run to run, Slurm requeues the job (same ID), and the count goes on until the payload ends
    by itself, which ends the job."""
    fetch = subprocess.run([os.path.join(REPO, "scripts", "criu-fetch")], capture_output=True, text=True, timeout=900)
    assert fetch.returncode == 0, fetch.stderr
    payload = tmp_path / "count.py"
    payload.write_text(MEMORY_COUNTER)
    jid = cluster.submit(store, tmp_path, "--mode", "criu", "--lifetime", "3s", "--interval", "1s", "--until-done",
                         "--name", "criu", "--", "python3", str(payload), "200",
                         env={"PERSISTJOB_CRIU": fetch.stdout.split()[-1]})
    try:
        gid = cluster.gid(jid)
        wait_for(lambda: (cluster.job(jid) or {}).get("JobState") in ("COMPLETED", None), 300, "the job to end")
    finally:
        cluster.cancel(jid)
    runs = sorted(log_of(seaweed, store, gid).runs(), key=lambda r: r["run"])
    # 200 counts are at least 10 s of the payload's own time and a run gives it about 3 s: three runs at least
    assert len(runs) >= 3 and runs[-1]["exit_code"] == 0, runs
    assert all(b["restored_generation"] == a["generation"] for a, b in zip(runs, runs[1:]))
    from persistjob.worker.modes import CriuMode
    from tests.conftest import Store

    r = Store("s3", store, seaweed.env(), seaweed).cli("checkpoint", "restore", "--store", store, "--job-id", gid,
                                                       "--dest", str(tmp_path / "final"))
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "final" / CriuMode.OUT) as f:
        counts = [int(line.split()[1]) for line in f if line.startswith("count ")]
    assert counts == list(range(1, 201)), "restarted instead of restored"
    assert not os.path.exists(CriuMode.checkpoint_dir("", gid)), "the job's directory on the node, removed at its end"
