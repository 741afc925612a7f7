#!/usr/bin/env python3
"""Chunks kept once across jobs (``?dedup=store``) beside each job keeping its own, on SeaweedFS.

Issue 15's figures: 50 jobs whose state is the same 50 MB application plus 1 MB of their own, four
committing at a time (with the library, one process).  For each store: bytes stored, bytes the
commits uploaded, seconds; then (shared store) purge 49 jobs, one gc pass, restore the 50th and compare
it byte for byte, purge it and count what is left after ``persistjob store gc --grace 0``.

Usage: python benchmarks/dedup_bench.py [--jobs 50] [--app-mb 50] [--own-mb 1]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.conftest import Store  # noqa: E402
from tests.integration.test_dedup import dedup, fifty_jobs  # noqa: E402
from tests.servers import SeaweedFS  # noqa: E402

MB = 1 << 20


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--app-mb", type=int, default=50)
    ap.add_argument("--own-mb", type=int, default=1)
    a = ap.parse_args()
    server = SeaweedFS(tempfile.mkdtemp(prefix="pj-dedup-")).start()
    work = Path(tempfile.mkdtemp(prefix="pj-dedup-ws-"))
    try:
        rows = {}
        for name in ("per job", "shared"):
            base = Store("s3", "s3://%s/jobs" % server.make_bucket(), server.env(), server)
            s = dedup(base, window=10.0, lease=60.0) if name == "shared" else base
            os.makedirs(work / name.replace(" ", "-"))
            rows[name] = fifty_jobs(s, work / name.replace(" ", "-"), a.jobs, a.app_mb, a.own_mb, store_gc=name == "shared")
            if name == "shared":
                r = subprocess.run([sys.executable, "-m", "persistjob", "store", "gc", "--store", s.url, "--grace", "0"],
                                   env=dict(os.environ, **s.env, PYTHONPATH=REPO), capture_output=True, text=True)
                keys = [o.key for o in s.backend().list("")]
                rows[name]["left"] = "%d objects (%s)" % (len(keys), r.stdout.strip() or r.stderr.strip())
            shutil.rmtree(work / name.replace(" ", "-"), ignore_errors=True)
        target = 1.2 * (a.app_mb + a.jobs * a.own_mb) * MB
        print("%d jobs, each %d MB shared application + %d MB own data, 4 committing at a time, SeaweedFS 4.48"
              % (a.jobs, a.app_mb, a.own_mb))
        print("   %-8s  %12s  %12s  %9s" % ("store", "stored MB", "uploaded MB", "seconds"))
        for name, r in rows.items():
            print("   %-8s  %12.1f  %12.1f  %9.1f" % (name, r["stored"] / MB, r["uploaded"] / MB, r["commit_seconds"]))
        sh, pj = rows["shared"], rows["per job"]
        print("   shared / per job, stored: %.3f;  target < 1.2 x (%d MB + %d x %d MB) = %.1f MB: %s"
              % (sh["stored"] / pj["stored"], a.app_mb, a.jobs, a.own_mb, target / MB,
                 "met" if sh["stored"] < target else "NOT met"))
        print("   purge %d + one gc pass: %d chunks deleted, %.1f MB left, job %d restored byte for byte"
              % (a.jobs - 1, sh["gc_deleted"], sh["stored_after_gc"] / MB, a.jobs))
        print("   purge all + store gc --grace 0: %s" % sh["left"])
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
