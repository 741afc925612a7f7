#!/usr/bin/env python3
"""persistjob on the sandbox HTCondor pool, side by side with plain HTCondor (needs root).

1. Submitting 1,000 persistent jobs: ``persistjob submit --count 1000`` vs ``condor_submit``
   of the equivalent file (what ``persistjob submit --dry-run`` prints). Jobs are submitted on
   hold and removed afterwards. Target: persistjob no slower (ratio condor/persistjob >= 1).
2. A checkpoint cycle: a payload whose state is an 80 MB static file plus a small counter,
   exiting 85 after each step. HTCondor's own self-checkpointing (checkpoint_exit_code = 85,
   transfer_checkpoint_files = state) vs persistjob exit-code mode with a SeaweedFS store.
   Cycle = time from one payload exit to the next payload start, median. Targets: persistjob
   median <= 0.2 s; bytes uploaded per cycle < 1% of HTCondor's.

Usage: sudo python benchmarks/condor_submit_bench.py [--jobs 1000] [--rounds 9] [--cycles 20]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from persistjob.repo.log import JobLog  # noqa: E402
from persistjob.storage import get_backend  # noqa: E402
from tests.servers import SeaweedFS  # noqa: E402

from _condor import SANDBOX, pool_and_store, sandbox  # noqa: E402  (benchmarks/, this script's directory)
from _sidebyside import alternate  # noqa: E402

# what a job needs of the submitter's environment to reach the store (no secret: those ride in a file)
STORE_ENV = ["--getenv", "AWS_ENDPOINT_URL_S3", "--getenv", "AWS_DEFAULT_REGION", "--getenv", "AWS_EC2_METADATA_DISABLED"]
STEP = "/opt/persistjob-src/benchmarks/payloads/ckpt_step.py"


# Timing runs inside the chroot, so that chroot/su overhead is not counted for either side.
SUBMIT_TIMER = r"""
import subprocess, sys, time, json
mode, n, subfile = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "persistjob":
    cmd = ["persistjob", "-q", "submit", "--store", "s3://bench/submit", "--count", n, "--name", "subbench",
           "--append", "hold=true", "--output-dir", "/tmp", "--", "/bin/true"]
else:
    cmd = ["condor_submit", subfile]
t = time.perf_counter()
out = subprocess.run(cmd, capture_output=True, text=True)
dt = time.perf_counter() - t
assert out.returncode == 0, out.stdout + out.stderr
print(json.dumps({"seconds": dt, "out": out.stdout.strip().splitlines()[-1]}))
"""


# The submitter's credentials as the default submit finds them (environment): persistjob writes them to a
# 0600 file that rides with each job; condor_submit gets the same description, file included.
BENCH_CREDS = {"AWS_ACCESS_KEY_ID": "benchkey", "AWS_SECRET_ACCESS_KEY": "benchsecret"}


def bench_submit(jobs: int, rounds: int) -> None:
    dry = sandbox("persistjob", "submit", "--dry-run", "--store", "s3://bench/submit", "--count", str(jobs),
                  "--name", "subbench", "--append", "hold=true", "--output-dir", "/tmp", "--", "/bin/true",
                  env=BENCH_CREDS).stdout
    subfile = "/tmp/subbench-%s.sub" % uuid.uuid4().hex[:6]
    subprocess.run([SANDBOX, "run", "--", "sh", "-c", "cat > %s" % subfile], input=dry, text=True, check=True)
    times = alternate(
        rounds, ("persistjob", "condor_submit"),
        lambda mode: json.loads(sandbox("python3", "-c", SUBMIT_TIMER, mode, str(jobs), subfile,
                                        env=BENCH_CREDS).stdout)["seconds"],
        after=lambda: sandbox("condor_rm", "-constraint", 'PersistName == "subbench"', check=False))
    m = statistics.median
    print("submit %d persistent jobs (median of %d, alternating)" % (jobs, rounds))
    print("   condor_submit of the equivalent file: %.3fs" % m(times["condor_submit"]))
    print("   persistjob submit (htcondor2):        %.3fs" % m(times["persistjob"]))
    print("   ratio condor_submit/persistjob: %.2f (target >= 1: persistjob no slower)"
          % (m(times["condor_submit"]) / m(times["persistjob"])))


def read_cycles(log_text: str):
    starts, exits = [], []
    for line in log_text.splitlines():
        parts = line.split()
        if parts and parts[0] == "start":
            starts.append(float(parts[1]))
        elif parts and parts[0] == "exit":
            exits.append(float(parts[1]))
    # cycle k: from exit k to start k+1
    return [s - e for e, s in zip(exits, starts[1:])]


def wait_gone(constraint: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not sandbox("condor_q", "-constraint", constraint, "-af", "ClusterId").stdout.strip():
            return
        time.sleep(2)
    raise SystemExit("jobs %s did not finish in %.0fs" % (constraint, timeout))


def bench_cycle(cycles: int, server: SeaweedFS) -> None:
    tag = uuid.uuid4().hex[:6]
    # HTCondor's own self-checkpointing
    hlog = "/tmp/cycle-htcondor-%s.log" % tag
    sub = "\n".join([
        "universe = vanilla", "executable = /usr/bin/python3",
        'arguments = "%s --log %s --steps %d"' % (STEP, hlog, cycles),
        "transfer_executable = false", "should_transfer_files = YES", "when_to_transfer_output = ON_EXIT_OR_EVICT",
        "checkpoint_exit_code = 85", "transfer_checkpoint_files = state", "+TransferOutput = \"\"",
        "+PersistName = \"cyclebench\"", "output = /tmp/cycle-h-%s.out" % tag, "error = /tmp/cycle-h-%s.err" % tag,
        "log = /tmp/cycle-h-%s.log" % tag, "queue", ""])
    subprocess.run([SANDBOX, "run", "--", "sh", "-c", "cat > /tmp/cycle-%s.sub && condor_submit /tmp/cycle-%s.sub"
                    % (tag, tag)], input=sub, text=True, check=True, capture_output=True)
    t = time.monotonic()
    wait_gone('PersistName == "cyclebench"', 900)
    htc_wall = time.monotonic() - t
    htc = read_cycles(sandbox("cat", hlog).stdout)

    # persistjob, exit-code mode, SeaweedFS store on the host
    bucket = server.make_bucket()
    plog = "/tmp/cycle-persistjob-%s.log" % tag
    out = sandbox("persistjob", "-q", "submit", "--store", "s3://%s/cycle" % bucket, "--mode", "exit-code",
                  "--until-done", "--lifetime", "1h", "--name", "cyclebench", *STORE_ENV, "--output-dir",
                  "/tmp", "--", "/usr/bin/python3", STEP, "--log", plog, "--steps", str(cycles), env=server.env()).stdout
    cluster = out.split()[-1]
    t = time.monotonic()
    gid = sandbox("condor_q", cluster, "-af", "GlobalJobId").stdout.strip()
    wait_gone('PersistName == "cyclebench"', 900)
    pj_wall = time.monotonic() - t
    pj = read_cycles(sandbox("cat", plog).stdout)
    os.environ.update(server.env())
    log = JobLog(get_backend("s3://%s/cycle" % bucket), gid)
    uploaded = [r.data.get("uploaded", 0) for r in log.records() if r.kind == "commit"]
    state_bytes = 80 * (1 << 20) + 4
    m = statistics.median
    print("checkpoint cycle: 80 MB static + counter, payload exits 85 each step (%d steps each)" % cycles)
    print("   HTCondor checkpoint_exit_code: median cycle %.3fs (min %.3f, max %.3f), %.0f MB transferred per cycle, "
          "%.0fs wall" % (m(htc), min(htc), max(htc), state_bytes / 2 ** 20, htc_wall))
    print("   persistjob exit-code mode:     median cycle %.3fs (min %.3f, max %.3f), median %d bytes uploaded per "
          "cycle (first commit %.1f MB), %.0fs wall" % (m(pj), min(pj), max(pj), m(uploaded[1:] or [0]),
                                                       uploaded[0] / 2 ** 20 if uploaded else 0, pj_wall))
    print("   median cycle persistjob/HTCondor: %.2f (target: persistjob <= 0.2 s)" % (m(pj) / m(htc)))
    print("   bytes per cycle persistjob/HTCondor: %.5f (target < 0.01)" % (m(uploaded[1:] or [0]) / state_bytes))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--cycles", type=int, default=20)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (the HTCondor sandbox)")
    with pool_and_store("pj-cbench-") as server:
        print("HTCondor %s (sandbox pool), SeaweedFS 4.48, this machine (%d cores)"
              % (sandbox("condor_version").stdout.split()[1], os.cpu_count() or 0))
        bench_submit(a.jobs, a.rounds)
        bench_cycle(a.cycles, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
