#!/usr/bin/env python3
"""``persistjob status`` over many persistent jobs on the sandbox HTCondor pool and SeaweedFS (needs root).

1. Submits N idle, held persistent jobs to the sandbox pool (``persistjob submit --count N``, held).
2. Gives each of them a store with real commits, with the library in this one process (not N
   wrappers): per job R runs of G commits each (a claim, G commits of a small file, an end record).
3. Times, side by side in one run (alternating), ``persistjob status --stats`` (every job's summary
   from one listing of the store) and ``persistjob status --from-log --stats`` (each job's log),
   and ``condor_q`` of the same jobs for scale.  Prints seconds and store requests per job.

Target (issue 15): under 30 s for 10,000 jobs, a bounded number of requests per job.

Usage: sudo python benchmarks/status_bench.py [--jobs 10000] [--runs 1] [--commits 1] [--rounds 2]
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from persistjob.errors import Fenced  # noqa: E402
from persistjob.repo import JobRepo  # noqa: E402
from persistjob.repo.log import JobLog  # noqa: E402
from persistjob.storage import get_backend  # noqa: E402
from tests.servers import SeaweedFS  # noqa: E402

from _condor import pool_and_store, sandbox  # noqa: E402  (benchmarks/, this script's directory)
from _sidebyside import alternate  # noqa: E402

NAME = "statusbench"


def submit(jobs: int, store: str, env) -> list:
    sandbox("persistjob", "-q", "submit", "--store", store, "--count", str(jobs), "--name", NAME,
            "--append", "hold=true", "--output-dir", "/tmp", "--", "/bin/true", env=env)
    gids = sandbox("condor_q", "-constraint", 'PersistName == "%s"' % NAME, "-af", "GlobalJobId").stdout.split()
    if len(gids) != jobs:
        raise SystemExit("expected %d queued jobs, found %d" % (jobs, len(gids)))
    return gids


def fill_stores(store: str, gids: list, runs: int, commits: int, workdir: str) -> float:
    """Real claims, commits and end records for every job, 8 threads; returns the seconds it took."""
    backend = get_backend(store)
    done = [0]
    odd: list = []
    lock = threading.Lock()

    def one(i_gid):
        i, gid = i_gid
        d = os.path.join(workdir, "j%d" % i)
        os.makedirs(d, exist_ok=True)
        for run in range(runs):
            repo = JobRepo(backend, gid)
            repo.check_fencing = lambda: None  # the pool's one store was probed by the submit's first run
            try:
                repo.claim()
            except Fenced:
                # Nobody else writes these keys.  Seen once at 10,000 jobs: SeaweedFS answered 412 to the
                # create of a fresh job's first record.  Say whose the record is, and claim after it.
                rec = JobLog(backend, gid).get(1)
                with lock:
                    odd.append(rec.data.get("pid") == os.getpid())
                repo = JobRepo(backend, gid)
                repo.check_fencing = lambda: None
                repo.claim()
            ws = repo.workspace(d, racy=0)
            for g in range(commits):
                with open(os.path.join(d, "state"), "w") as f:
                    f.write("job %s run %d commit %d\n" % (gid, run, g) * 20)
                repo.commit(ws, ws.snapshot(), time.monotonic())
            ws.close()
            repo.end_run(0, "bench")
        with lock:
            done[0] += 1
            if done[0] % 1000 == 0:
                print("   ... %d job stores filled" % done[0], flush=True)

    t = time.monotonic()
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(one, enumerate(gids)))
    if odd:
        print("   %d claim(s) of a fresh job were refused (412) by the store; the record there was written by "
              "this process in %d of them" % (len(odd), sum(odd)))
    return time.monotonic() - t


STATS = re.compile(r"status: (\d+) jobs, (\d+) store requests \(([\d.]+) per job: ([^)]*)\)")


def run_bench(a: argparse.Namespace, server: SeaweedFS) -> None:
    """Submit, fill the stores, time status both ways; print the table."""
    env = server.env()
    os.environ.update(env)
    store = "s3://%s/status" % server.make_bucket()
    print("HTCondor %s (sandbox pool), SeaweedFS 4.48, this machine (%d cores); %d jobs, %d run(s) of %d "
          "commit(s) each" % (sandbox("condor_version").stdout.split()[1], os.cpu_count() or 0, a.jobs, a.runs,
                              a.commits))
    t = time.monotonic()
    gids = submit(a.jobs, store, env)
    print("   submitted %d held jobs in %.1fs" % (len(gids), time.monotonic() - t))
    with tempfile.TemporaryDirectory(prefix="pj-sbench-ws-") as work:
        print("   filled the job stores in %.1fs" % fill_stores(store, gids, a.runs, a.commits, work))

    seen = {}

    def status(mode: str) -> float:
        cmd = ["persistjob", "status", "--stats", "--timeout", "600", "--json",
               "--constraint", 'PersistName == "%s"' % NAME] + (["--from-log"] if mode == "from log" else [])
        t = time.monotonic()
        r = sandbox(*cmd, env=env, check=False)
        dt = time.monotonic() - t
        m = STATS.search(r.stderr)
        if r.returncode not in (0, 1) or not m or int(m.group(1)) != a.jobs:
            raise SystemExit("status (%s) failed: rc %d\n%s" % (mode, r.returncode, r.stderr[-2000:]))
        unread = r.stdout.count('"store_error"')
        seen[mode] = (int(m.group(2)), m.group(4), unread)
        return dt

    times = alternate(a.rounds, ("summary", "from log"), status)
    t = time.monotonic()
    sandbox("condor_q", "-constraint", 'PersistName == "%s"' % NAME, "-af", "GlobalJobId", "PersistStore")
    q = time.monotonic() - t
    m = statistics.median
    print("persistjob status over %d jobs (median of %d, alternating; wall time of the command)" % (a.jobs, a.rounds))
    for mode in ("summary", "from log"):
        total, kinds, unread = seen[mode]
        print("   %-9s %6.1fs  %d store requests, %.4f per job (%s)%s"
              % (mode, m(times[mode]), total, total / a.jobs, kinds, ", %d jobs unread" % unread if unread else ""))
    print("   condor_q of the same jobs: %.2fs" % q)
    print("   ratio from-log/summary: %.2f; target: summary under 30 s for 10,000 jobs"
          % (m(times["from log"]) / m(times["summary"])))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--commits", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (the HTCondor sandbox)")
    with pool_and_store("pj-sbench-") as server:
        try:
            run_bench(a, server)
        finally:
            sandbox("condor_rm", "-constraint", 'PersistName == "%s"' % NAME, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
