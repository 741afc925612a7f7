#!/usr/bin/env python3
"""One step of a self-checkpointing payload: 80 MB of static state plus a small counter.

Appends "start T" and "exit T" to --log, bumps state/counter, exits 85 (checkpoint, run me
again) until --steps is reached, then exits 0. Used for both HTCondor's own
checkpoint_exit_code and persistjob's exit-code mode, so the cycles are comparable.
"""
import argparse
import os
import sys
import time

t0 = time.time()
p = argparse.ArgumentParser()
p.add_argument("--log", required=True)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--mb", type=int, default=80)
a = p.parse_args()
with open(a.log, "a") as f:
    f.write("start %.6f\n" % t0)
os.makedirs("state", exist_ok=True)
if not os.path.exists("state/static.bin"):
    with open("state/static.bin.tmp", "wb") as f:
        for _ in range(a.mb):
            f.write(os.urandom(1 << 20))
    os.rename("state/static.bin.tmp", "state/static.bin")
try:
    with open("state/counter") as f:
        n = int(f.read())
except FileNotFoundError:
    n = 0
n += 1
with open("state/counter.tmp", "w") as f:
    f.write(str(n))
os.rename("state/counter.tmp", "state/counter")
with open(a.log, "a") as f:
    f.write("exit %.6f %d\n" % (time.time(), n))
sys.exit(0 if n >= a.steps else 85)
