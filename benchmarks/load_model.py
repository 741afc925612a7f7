#!/usr/bin/env python3
"""The load that persistent jobs put on their store: measured per run and per commit on a real
SeaweedFS with the library (one job), then extrapolated to N jobs (docs/performance.md).

One job's state is S MB (random, so nothing compresses; the 2010 talk's BOINC jobs carried 100 MB);
each interval it changes C MB of it.  Measured: store requests and bytes of a run's start (claim and
restore), of one commit, of a run's end.  Model: N jobs, a commit every I seconds, a run every L
seconds (the slot lifetime), each run's start restoring the whole state on a fresh node:

    requests/s = N * (commit_requests / I + (start_requests + end_requests) / L)
    bytes/s up = N * commit_bytes / I;   bytes/s down = N * restore_bytes / L

printed for N = 1,000 and 200,000 beside the 2010 talk's figure (1,000 jobs x 100 MB hourly: 27 MB/s,
each checkpoint the whole state), once for a store where each job keeps its own chunks and once for a
``?dedup=store`` store (80% of every job's state the same application): there a commit also lists the gc
lease and checks its new chunks, and the store holds the application once.

Usage: python benchmarks/load_model.py [--mb 100] [--change-mb 1] [--interval 3600] [--lifetime 43200]
"""

import argparse
import os
import random
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from persistjob.repo import JobRepo  # noqa: E402
from persistjob.storage import get_backend  # noqa: E402
from persistjob.storage.counting import CountingBackend  # noqa: E402
from tests.servers import SeaweedFS  # noqa: E402


class Meter:
    """Requests (all kinds) and bytes read between two readings of a CountingBackend; bytes written
    come from the commit records."""

    def __init__(self, b: CountingBackend) -> None:
        self.b = b
        self.mark()

    def mark(self) -> None:
        self.req, self.read = sum(self.b.requests.values()), self.b.bytes_read

    def take(self):
        out = (sum(self.b.requests.values()) - self.req, self.b.bytes_read - self.read)
        self.mark()
        return out


def measure(b: CountingBackend, a: argparse.Namespace, work: str) -> dict:
    """One job's commits, end and fresh start; then a second job's first commit (what a new job
    uploads) and the bytes the two jobs keep stored.  Parts 0-7 of the state (80%) are the same in
    every job (an application); commits change the job's own parts 8-9."""
    m = Meter(b)
    rng = random.Random(3)
    part = (a.mb << 20) // 10
    app = [random.Random(100 + i).randbytes(part) for i in range(8)]
    out = {}
    for job in (1, 2):
        src, dst = os.path.join(work, "src%d" % job), os.path.join(work, "dst%d" % job)
        os.makedirs(src)
        os.makedirs(dst)
        for i in range(10):
            with open(os.path.join(src, "part%d.bin" % i), "wb") as f:
                f.write(app[i] if i < 8 else os.urandom(part))
        before = sum(o.size for o in b.list(""))
        repo = JobRepo(b, "load#1.0#%d" % job)
        repo.claim()
        ws = repo.workspace(src, racy=0)
        first = repo.commit(ws, ws.snapshot())
        m.take()
        out["first_upload"] = first.data["uploaded"]
        if job == 2:
            ws.close()
            out["stored"] = sum(o.size for o in b.list(""))
            out["added_per_job"] = out["stored"] - before
            break
        commits = []
        for _ in range(a.commits):
            path = os.path.join(src, "part%d.bin" % rng.randrange(8, 10))
            with open(path, "r+b") as f:
                f.seek(rng.randrange(part - int(a.change_mb * 2 ** 20)))
                f.write(os.urandom(int(a.change_mb * 2 ** 20)))
            rec = repo.commit(ws, ws.snapshot())
            req, _ = m.take()
            commits.append((req, rec.data["uploaded"]))
        ws.close()
        repo.end_run(0, "load model")
        out["end_req"], _ = m.take()
        # a run's start on a fresh node: claim (with the fencing probe) and a full restore
        repo = JobRepo(b, "load#1.0#%d" % job)
        repo.claim()
        ws = repo.workspace(dst, racy=0)
        repo.restore(ws)
        ws.close()
        out["start_req"], out["restore_bytes"] = m.take()
        out["commit_req"] = sum(r for r, _ in commits) / len(commits)
        out["commit_bytes"] = sum(u for _, u in commits) / len(commits)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--change-mb", type=float, default=1.0)
    ap.add_argument("--interval", type=float, default=3600.0)
    ap.add_argument("--lifetime", type=float, default=12 * 3600.0)
    ap.add_argument("--commits", type=int, default=5)
    a = ap.parse_args()
    server = SeaweedFS(tempfile.mkdtemp(prefix="pj-load-")).start()
    try:
        os.environ.update(server.env())
        rows = {}
        for name, query in (("per job", ""), ("shared", "?dedup=store")):
            b = CountingBackend(get_backend("s3://%s/load%s" % (server.make_bucket(), query)))
            with tempfile.TemporaryDirectory(prefix="pj-load-ws-") as work:
                rows[name] = measure(b, a, work)
        print("measured on SeaweedFS 4.48, state %d MB random (80%% of it the same in every job), %.1f MB of the "
              "job's own changed per commit:" % (a.mb, a.change_mb))
        for name, r in rows.items():
            print("  %s: commit %.1f requests, %.2f MB uploaded (mean of %d); run start (claim + full restore) %d "
                  "requests, %.1f MB read; run end %d requests; a new job's first commit uploads %.1f MB"
                  % (name, r["commit_req"], r["commit_bytes"] / 2 ** 20, a.commits, r["start_req"],
                     r["restore_bytes"] / 2 ** 20, r["end_req"], r["first_upload"] / 2 ** 20))
        print("model: a commit every %.0f s, a new run (fresh node, full restore) every %.0f s" % (a.interval, a.lifetime))
        print("   %-8s  %9s  %12s  %10s  %10s  %10s" % ("store", "jobs", "requests/s", "MB/s up", "MB/s down", "stored GB"))
        for n in (1000, 200000):
            for name, r in rows.items():
                rps = n * (r["commit_req"] / a.interval + (r["start_req"] + r["end_req"]) / a.lifetime)
                up = n * r["commit_bytes"] / a.interval / 2 ** 20
                down = n * r["restore_bytes"] / a.lifetime / 2 ** 20
                stored = (r["stored"] + (n - 2) * r["added_per_job"]) / 2 ** 30  # each further job adds what job 2 did
                print("   %-8s  %9d  %12.1f  %10.2f  %10.2f  %10.1f" % (name, n, rps, up, down, stored))
        print("   2010 talk: 1,000 jobs x 100 MB hourly, whole state each time: %.1f MB/s" % (1000 * 100 / 3600.0))
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
