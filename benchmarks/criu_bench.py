#!/usr/bin/env python3
"""--mode criu on a 200 MB payload, side by side with raw criu to local disk (needs root and a criu:
scripts/criu-fetch).

The payload holds 200 MB of random bytes in memory and rewrites 2 MB of it (1%) every second.
1. raw: ``criu dump --leave-running`` into a local directory, and ``criu restore`` of a dump (seconds,
   image bytes), median of --rounds;
2. persistjob: ``persistjob run --mode criu`` with a file:// store on the same disk, --interval 2s:
   per commit the seconds (dump + snapshot + upload) and the bytes uploaded (CRIU on this kernel has
   no dirty-memory tracking, so each dump writes full images: the store's chunk dedup is what keeps
   the upload near the 1% that changed); then the next run's restore (download + criu restore).

Usage: sudo .venv/bin/python benchmarks/criu_bench.py [--mb 200] [--rounds 5]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from persistjob.repo.log import JobLog  # noqa: E402
from persistjob.storage import get_backend  # noqa: E402

PAYLOAD = r"""
import os, sys, time
mb = int(sys.argv[1])
blob = bytearray(os.urandom(mb << 20))
step = max(1, mb // 100) << 20  # 1% of it
i = 0
while True:
    off = (i * step) % (len(blob) - step)
    blob[off:off + step] = os.urandom(step)
    i += 1
    print("tick", i, flush=True)
    time.sleep(1)
"""


def size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def raw(criu, mb, rounds, work):
    script = os.path.join(work, "payload.py")
    with open(script, "w") as f:
        f.write(PAYLOAD)
    dumps, restores, images = [], [], 0
    for r in range(rounds):
        out = open(os.path.join(work, "raw.out"), "a")
        p = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "setsid", sys.executable, script, str(mb)],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        time.sleep(3 + mb / 100)
        init = int(subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()[0])
        d = os.path.join(work, "img%d" % r)
        os.makedirs(d)
        t = time.perf_counter()
        subprocess.run([criu, "dump", "-t", str(init), "-D", d, "-o", "dump.log"], check=True)
        dumps.append(time.perf_counter() - t)
        images = size(d)
        p.wait()
        t = time.perf_counter()
        subprocess.run([criu, "restore", "-D", d, "-d", "--restore-sibling", "--pidfile", os.path.join(d, "pid"),
                        "-o", "restore.log"], check=True)
        restores.append(time.perf_counter() - t)
        pid = int(open(os.path.join(d, "pid")).read())
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        shutil.rmtree(d)
    m = statistics.median
    print("   raw criu to local disk:   dump %.2fs, restore %.2fs (medians of %d), %.0f MB of images"
          % (m(dumps), m(restores), rounds, images / 2 ** 20))


def persistjob(criu, mb, work):
    script = os.path.join(work, "payload.py")
    store = "file://%s" % os.path.join(work, "store")
    job = "criubench-%s" % os.urandom(4).hex()
    env = dict(os.environ, PERSISTJOB_CRIU=criu)
    cmd = [sys.executable, "-m", "persistjob", "-q", "run", "--job-id", job, "--store", store, "--mode", "criu",
           "--interval", "2s", "--lifetime", "%ds" % (12 + mb // 50), "--", sys.executable, script, str(mb)]
    subprocess.run(cmd, env=env, check=False)
    t = time.perf_counter()
    second = subprocess.Popen(cmd[:cmd.index("--lifetime") + 1] + ["4s"] + cmd[cmd.index("--lifetime") + 2:], env=env)
    second.wait()
    log = JobLog(get_backend(store), job)
    commits = [r for r in log.records() if r.kind == "commit"]
    runs = sorted(log.runs(), key=lambda r: r["run"])
    up = [c.data.get("uploaded", 0) for c in commits[1:]]
    secs = [float(c.data.get("seconds", 0) or 0) for c in commits[1:]]
    m = statistics.median
    print("   persistjob --mode criu:    commit %.2fs median (dump + snapshot + upload), %.1f MB uploaded per commit "
          "median (%.1f%% of the checkpoint; first commit %.0f MB), %d commits" % (
              m(secs), m(up) / 2 ** 20, 100.0 * m(up) / max(1, commits[-1].data.get("bytes", 1)),
              commits[0].data.get("uploaded", 0) / 2 ** 20, len(commits)))
    if len(runs) >= 2:
        r2 = runs[1]
        print("   persistjob restore (next run): %.1f MB downloaded; run 2 started %.2fs after run 1 ended"
              % (r2.get("bytes_downloaded", 0) / 2 ** 20, r2["start"] - runs[0]["end"]))
    print("   (second run wall time %.1fs)" % (time.perf_counter() - t))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (criu)")
    criu = subprocess.run([os.path.join(REPO, "scripts", "criu-fetch")], capture_output=True, text=True,
                          check=True).stdout.split()[-1]
    work = tempfile.mkdtemp(prefix="pj-criubench-", dir="/var/tmp")
    try:
        print("%s, a %d MB payload rewriting 1%% of it every second, this machine (%d cores)"
              % (subprocess.run([criu, "--version"], capture_output=True, text=True).stdout.split("\n")[0], a.mb,
                 os.cpu_count() or 0))
        raw(criu, a.mb, a.rounds, work)
        persistjob(criu, a.mb, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
