#!/usr/bin/env python3
"""A payload that cannot checkpoint itself: its whole state is in memory.

It holds ``--megabytes`` of memory and a counter, prints ``count N`` every ``--step`` seconds and exits
0 at ``--finish-at``.  Killed and started again, it would begin at 1; under
``persistjob run --mode criu`` each run goes on from where the last checkpoint left it (the count printed
by every run continues without a gap).  Standard library only.

    persistjob local --mode criu --store file:///tmp/store -- python3 memory_counter.py --finish-at 500
"""

import argparse
import os
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megabytes", type=int, default=20)
    p.add_argument("--step", type=float, default=0.05)
    p.add_argument("--finish-at", type=int, default=0, help="exit 0 at this count (0: never)")
    a = p.parse_args()
    blob = bytearray(os.urandom(1 << 20)) * a.megabytes  # resident, never written to a file
    n = 0
    while True:
        n += 1
        blob[n % len(blob)] = n & 0xFF
        print("count", n, flush=True)
        if a.finish_at and n >= a.finish_at:
            return 0
        time.sleep(a.step)


if __name__ == "__main__":
    raise SystemExit(main())
