#!/usr/bin/env python3
"""persistjob on the sandbox Slurm cluster, side by side with plain Slurm and with the HTCondor pool (root).

1. Submitting 1,000 persistent jobs: ``persistjob submit --scheduler slurm --count 1000`` (one
   ``sbatch --array``) vs ``sbatch`` of the same script (what ``--dry-run`` prints), both held
   (SBATCH_HOLD) and cancelled afterwards; alternating rounds, medians.  Ratio sbatch/persistjob.
2. The re-run cycle: a persistent job (the counter example, SeaweedFS store) with a 2 s lifetime;
   cycle = one run's end (the wrapper exits 85 after its final checkpoint) to the next run's start,
   from the store's run records, median.  On Slurm with the job requeueing itself (``scontrol
   requeue``), on Slurm with ``RequeueExit=85`` (the job just exits 85), and on the HTCondor pool.
   The sandbox cluster uses cred_expire=5 and 2 s scheduler passes (Slurm's defaults hold a requeued
   job back 120 s and pass every 60 s: about 160 s per cycle).

Usage: sudo .venv/bin/python benchmarks/slurm_bench.py [--jobs 1000] [--rounds 5] [--cycles 10] [--no-condor]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.servers import SeaweedFS  # noqa: E402

from _sidebyside import alternate  # noqa: E402  (benchmarks/, this script's directory)

SLURM = os.path.join(REPO, "scripts", "slurm-sandbox")
CONDOR = os.path.join(REPO, "scripts", "condor-sandbox")
STATE = os.environ.get("PJ_SLURM_SANDBOX", "/var/tmp/persistjob-slurm")
CONF = os.path.join(STATE, "etc", "slurm.conf")
STORE_ENV = ["--getenv", "AWS_ENDPOINT_URL_S3", "--getenv", "AWS_DEFAULT_REGION", "--getenv", "AWS_EC2_METADATA_DISABLED"]
CREDS = {"AWS_ACCESS_KEY_ID": "benchkey", "AWS_SECRET_ACCESS_KEY": "benchsecret"}


def env(extra=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PERSISTJOB_"))}
    e.update(SLURM_CONF=CONF, AWS_EC2_METADATA_DISABLED="true")
    e.update(extra or {})
    return e


def run(cmd, extra=None, check=True, stdin=None, cwd=None):
    r = subprocess.run(cmd, env=env(extra), capture_output=True, text=True, input=stdin, timeout=1800, cwd=cwd)
    if check and r.returncode:
        raise SystemExit("%s failed:\n%s%s" % (" ".join(cmd), r.stdout, r.stderr))
    return r


def pj(*args, extra=None, cwd=None):
    return run([sys.executable, "-m", "persistjob", *args], extra=extra, cwd=cwd)


def bench_submit(jobs, rounds, work):
    script = pj("submit", "--scheduler", "slurm", "--dry-run", "--store", "s3://bench/submit", "--count", str(jobs),
                "--name", "subbench", "--output-dir", work, "--", "/bin/true", extra=CREDS).stdout
    hold = dict(CREDS, SBATCH_HOLD="1")

    def measure(mode):
        t = time.perf_counter()
        if mode == "sbatch":
            run(["sbatch", "--parsable"], extra=hold, stdin=script)
        else:
            pj("submit", "--scheduler", "slurm", "--store", "s3://bench/submit", "--count", str(jobs),
               "--name", "subbench", "--output-dir", work, "--", "/bin/true", extra=hold)
        return time.perf_counter() - t

    times = alternate(rounds, ("persistjob", "sbatch"), measure,
                      after=lambda: run(["scancel", "--name", "subbench"], check=False))
    m = statistics.median
    print("submit %d persistent jobs (median of %d, alternating; both one array)" % (jobs, rounds))
    print("   sbatch of the same script:          %.3fs" % m(times["sbatch"]))
    print("   persistjob submit --scheduler slurm: %.3fs" % m(times["persistjob"]))
    print("   ratio sbatch/persistjob: %.2f (persistjob also resolves the credentials and builds the script)"
          % (m(times["sbatch"]) / m(times["persistjob"])))


def gaps(server, store, gid, runs, timeout=900):
    """Seconds from each run's end (the wrapper exited 85) to the next run's start, from the run records."""
    from persistjob.repo.log import JobLog
    from persistjob.storage import get_backend

    os.environ.update(server.env())
    log = JobLog(get_backend(store), gid)
    end = time.monotonic() + timeout
    while len([r for r in log.runs() if r.get("end")]) < runs and time.monotonic() < end:
        time.sleep(1)
    rs = sorted(log.runs(), key=lambda r: r["run"])
    return [b["start"] - a["end"] for a, b in zip(rs, rs[1:]) if a.get("end") and a.get("exit_code") == 85]


def report(label, g):
    m = statistics.median(g)
    print("   %-46s median %.2fs (min %.2f, max %.2f, %d cycles)" % (label, m, min(g), max(g), len(g)))
    return m


def slurm_cycle(server, runs, work, label):
    store = "s3://%s/cycle" % server.make_bucket()
    out = pj("submit", "--scheduler", "slurm", "--store", store, "--lifetime", "2s", "--interval", "1s",
             "--name", "cyclebench", *STORE_ENV, "--output-dir", work, "--", sys.executable,
             os.path.join(REPO, "examples", "counter", "counter.py"), "--quiet", extra=server.env(), cwd=work).stdout
    jid = out.split("as job ")[1].split()[0]
    nonce = run(["squeue", "-h", "-j", jid, "-o", "%k"]).stdout.split("id=")[1].split()[0]
    try:
        g = gaps(server, store, "slurm#pjsandbox#%s#%s" % (jid, nonce), runs)
    finally:
        run(["scancel", jid], check=False)
    return report(label, g)


def condor_cycle(server, runs):
    def sb(*cmd, extra=None):
        return subprocess.run([CONDOR, "run", "--", *cmd], env=dict(os.environ, **(extra or {})), capture_output=True,
                              text=True, timeout=1800, check=True)

    store = "s3://%s/cycle" % server.make_bucket()
    out = sb("persistjob", "-q", "submit", "--store", store, "--lifetime", "2s", "--interval", "1s",
             "--name", "cyclebench", *STORE_ENV, "--output-dir", "/tmp", "--", "/usr/bin/python3",
             "/opt/persistjob-src/examples/counter/counter.py", "--quiet", extra=server.env()).stdout
    cluster = out.split()[-1]
    gid = sb("condor_q", cluster, "-af", "GlobalJobId").stdout.strip()
    try:
        g = gaps(server, store, gid, runs)
    finally:
        sb("condor_rm", cluster)
    return report("HTCondor sandbox pool:", g)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=8)
    ap.add_argument("--no-condor", action="store_true", help="skip the HTCondor pool's cycle")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (the Slurm and HTCondor sandboxes)")
    slurm_was_up = "slurm-sandbox: running: slurmctld" in subprocess.run([SLURM, "status"], capture_output=True, text=True).stderr
    condor_was_up = "running:" in subprocess.run([CONDOR, "status"], capture_output=True, text=True).stderr
    server = None
    work = tempfile.mkdtemp(prefix="pj-sbench-")
    conf = None
    try:
        subprocess.run([SLURM, "up"], check=True)
        server = SeaweedFS(tempfile.mkdtemp(prefix="pj-sbench-weed-")).start()
        print("Slurm %s (sandbox, one node), SeaweedFS 4.48, this machine (%d cores)"
              % (run(["sinfo", "--version"]).stdout.split()[1], os.cpu_count() or 0))
        bench_submit(a.jobs, a.rounds, work)
        print("re-run cycle: end of a run (exit 85) to the start of the next, counter payload, 2 s lifetime")
        self_requeue = slurm_cycle(server, a.cycles, work, "Slurm, the job requeues itself:")
        conf = open(CONF).read()
        with open(CONF, "a") as f:
            f.write("RequeueExit=85\n")
        run(["scontrol", "reconfigure"])
        exit85 = slurm_cycle(server, a.cycles, work, "Slurm, RequeueExit=85 (the job exits 85):")
        print("   self-requeue/RequeueExit: %.2f" % (self_requeue / exit85))
        if not a.no_condor:
            subprocess.run([CONDOR, "up"], check=True, capture_output=True)
            htc = condor_cycle(server, a.cycles)
            print("   Slurm (self-requeue)/HTCondor: %.2f" % (self_requeue / htc))
    finally:
        if conf is not None:
            with open(CONF, "w") as f:
                f.write(conf)
            run(["scontrol", "reconfigure"], check=False)
        if server is not None:
            server.stop()
        if not slurm_was_up:
            subprocess.run([SLURM, "down", "--wipe"], check=False)
        if not a.no_condor and not condor_was_up:
            subprocess.run([CONDOR, "down"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
