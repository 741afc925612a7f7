#!/usr/bin/env python3
"""A payload whose state is many files that must agree: for the SIGKILL test.

Each cycle it rewrites every part file with the next step number (and random
filler), then step.json, then exits 85 so that the wrapper commits at once
(exit-code mode).  A committed generation is consistent when every part
starts with the step number in step.json.
"""
import argparse
import json
import os
import sys

p = argparse.ArgumentParser()
p.add_argument("--files", type=int, default=8)
p.add_argument("--kb", type=int, default=256)
a = p.parse_args()
try:
    with open("step.json") as f:
        step = json.load(f)["step"]
except FileNotFoundError:
    step = 0
step += 1
for i in range(a.files):
    with open("part%d" % i, "wb") as f:
        f.write(b"%016d" % step + os.urandom(a.kb * 1024))
with open("step.json.tmp", "w") as f:
    json.dump({"step": step, "files": a.files}, f)
os.rename("step.json.tmp", "step.json")
sys.exit(85)
