#!/usr/bin/env python3
"""Do fixed chunk boundaries dedup CRIU images?  A study for --mode criu (needs root and a criu:
scripts/criu-fetch).

On this kernel CRIU cannot track dirty memory, so every dump writes full page images; only the store's
chunk dedup keeps a commit near what changed.  ``pages-*.img`` holds the present pages in address
order, so a page that appears or disappears in the middle shifts everything after it.  Two payloads,
each dumped (``--leave-running``) --dumps times, --every seconds apart:

* ``stable``: --mb of random bytes in one buffer, 1% rewritten every second (the layout never changes);
* ``churn``: the same buffer, plus every second one of a pool of buffers between 64 kB and 2 MB is freed
  and another allocated (the layout changes: mappings come and go below the big one).

For each pair of consecutive dumps, the bytes of the later dump's chunks that the earlier one lacks, as
a share of the later dump: with fixed 1 MiB chunks (persistjob's default for files), with
content-defined chunks cut anywhere (a gear rolling hash, 256 KiB min, ~1 MiB average, 4 MiB max, as
FastCDC), and with content-defined cuts at page boundaries only (``checkpoint.page_chunks``, what
persistjob uses for ``pages-*.img`` since this study; other image files stay fixed); and the seconds
each takes to cut one dump.

Usage: sudo .venv/bin/python benchmarks/criu_chunking.py [--mb 50] [--dumps 4] [--every 2]
"""

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from persistjob.checkpoint import page_chunks  # noqa: E402

PAYLOAD = r"""
import os, random, sys, time
mb, churn = int(sys.argv[1]), sys.argv[2] == "churn"
blob = bytearray(os.urandom(mb << 20))
step = max(1, mb // 100) << 20
pool = [os.urandom(random.randint(64 << 10, 2 << 20)) for _ in range(8)] if churn else []
i = 0
while True:
    off = (i * step) % (len(blob) - step)
    blob[off:off + step] = os.urandom(step)
    if churn:
        pool.pop(random.randrange(len(pool)))
        pool.append(os.urandom(random.randint(64 << 10, 2 << 20)))
    i += 1
    time.sleep(1)
"""

_rng = random.Random(1)
GEAR = [_rng.getrandbits(64) for _ in range(256)]
M64 = (1 << 64) - 1


def fixed(data, size=1 << 20):
    return [data[i:i + size] for i in range(0, len(data), size)]


def cdc(data, avg_bits=20, lo=1 << 18, hi=1 << 22):
    """Content-defined chunks: a cut where the gear hash's top ``avg_bits`` bits are zero."""
    mask = ((1 << avg_bits) - 1) << (64 - avg_bits)
    out, start, n, gear = [], 0, len(data), GEAR
    while start < n:
        i, h, end = min(n, start + lo - 64), 0, min(n, start + hi)  # the hash depends on the last 64 bytes only
        while i < end:
            h = ((h << 1) + gear[data[i]]) & M64
            i += 1
            if not h & mask and i - start >= lo:
                break
        out.append(data[start:i])
        start = i
    return out


def pages(data):
    import io

    return list(page_chunks(io.BytesIO(data), 1 << 20))


def chunks_of(images, split, only_pages=False):
    """{sha256: size} of every image file's chunks (each file chunked on its own, as the store does)."""
    out = {}
    for name in sorted(os.listdir(images)):
        with open(os.path.join(images, name), "rb") as f:
            data = f.read()
        use = split if not only_pages or (name.startswith("pages-") and name.endswith(".img")) else fixed
        for c in use(data):
            out[hashlib.sha256(c).digest()] = len(c)
    return out


def new_share(before, after):
    total = sum(after.values())
    return sum(n for k, n in after.items() if k not in before) / max(1, total)


def study(criu, kind, mb, dumps, every, work):
    script = os.path.join(work, "payload.py")
    with open(script, "w") as f:
        f.write(PAYLOAD)
    out = open(os.path.join(work, "%s.out" % kind), "a")
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "setsid", sys.executable, script, str(mb), kind],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        time.sleep(2 + mb / 100)
        init = int(subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()[0])
        dirs = []
        for k in range(dumps):
            d = os.path.join(work, "%s-%d" % (kind, k))
            os.makedirs(d)
            subprocess.run([criu, "dump", "-t", str(init), "-D", d, "-o", "../%s-%d.log" % (kind, k), "--leave-running"],
                           check=True)
            dirs.append(d)
            time.sleep(every)
    finally:
        p.kill()
        p.wait()
    size = sum(os.path.getsize(os.path.join(dirs[-1], f)) for f in os.listdir(dirs[-1]))
    rows = {}
    for label, split, only in (("fixed 1 MiB", fixed, False), ("gear CDC ~1 MiB", cdc, False),
                               ("page-boundary CDC ~1 MiB", pages, True)):
        t = time.perf_counter()
        sets = [chunks_of(d, split, only) for d in dirs]
        secs = (time.perf_counter() - t) / len(dirs)
        shares = [new_share(a, b) for a, b in zip(sets, sets[1:])]
        rows[label] = (statistics.median(shares), max(shares), statistics.median(len(s) for s in sets), secs)
    print("   %-6s (%.0f MB of images per dump):" % (kind, size / 2 ** 20))
    for label, (med, worst, n, secs) in rows.items():
        print("      %-25s new bytes per dump %5.1f%% median, %5.1f%% worst (%d chunks; %.2fs to cut and hash a dump)"
              % (label, 100 * med, 100 * worst, n, secs))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--dumps", type=int, default=4)
    ap.add_argument("--every", type=float, default=2.0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (criu)")
    criu = subprocess.run([os.path.join(REPO, "scripts", "criu-fetch")], capture_output=True, text=True,
                          check=True).stdout.split()[-1]
    work = tempfile.mkdtemp(prefix="pj-criuchunk-", dir="/var/tmp")
    try:
        print("CRIU page images and chunk boundaries: a %d MB payload, %d dumps %.0fs apart, 1%% of the buffer "
              "rewritten per second" % (a.mb, a.dumps, a.every))
        for kind in ("stable", "churn"):
            study(criu, kind, a.mb, a.dumps, a.every, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
