#!/usr/bin/env python3
"""A counting payload: the smallest persistent job.

Its whole state is ``counter.json`` in the working directory (the
checkpoint directory).  Each step adds one and rewrites the file atomically.
It prints the run number, the generation it was restored from and its
progress, so a resume is visible.  Standard library only.

Modes of the wrapper it supports:
  freeze     nothing to do: the wrapper stops and resumes it
  signal     on SIGUSR1 it saves, creates $PERSISTJOB_CHECKPOINT_MARKER and
             waits until the wrapper removes it
  exit-code  with --exit-every N it exits 85 after N steps (state saved)

Options: --step SECONDS (0.2), --exit-every N, --finish-at COUNT (exit 0),
--steps N (exit 0 after N steps: one scheduled run's work), --crash (exit 3
at once), --quiet.
"""

import argparse
import json
import os
import signal
import sys
import time

STATE = "counter.json"


def load():
    try:
        with open(STATE) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"count": 0, "runs": []}


def save(state):
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, STATE)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--step", type=float, default=0.2)
    p.add_argument("--exit-every", type=int, default=0)
    p.add_argument("--finish-at", type=int, default=0)
    p.add_argument("--steps", type=int, default=0, help="do this many steps, then exit 0 (a run's share of work)")
    p.add_argument("--crash", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args()

    run = os.environ.get("PERSISTJOB_RUN", "?")
    gen = os.environ.get("PERSISTJOB_GENERATION", "?")
    if a.crash:
        print("counter: run %s crashing on purpose" % run, flush=True)
        sys.exit(3)
    state = load()
    state["runs"].append(int(run) if run.isdigit() else run)
    print("counter: run %s, restored generation %s, resuming at count %d" % (run, gen, state["count"]), flush=True)

    # The handlers only note the request; the loop acts on it between steps.
    # Saving inside a handler could interrupt the loop's own save between
    # its write and its rename (and nested handlers could pile up).
    requests = {"checkpoint": False, "stop": False}

    def on_checkpoint(signum, frame):
        requests["checkpoint"] = True

    def on_term(signum, frame):
        requests["stop"] = True

    def checkpoint():
        requests["checkpoint"] = False
        save(state)
        marker = os.environ.get("PERSISTJOB_CHECKPOINT_MARKER")
        if marker:
            with open(marker, "w"):
                pass
            while os.path.exists(marker):
                time.sleep(0.01)

    signal.signal(signal.SIGUSR1, on_checkpoint)
    signal.signal(signal.SIGTERM, on_term)
    steps = 0
    last_print = time.monotonic()
    while True:
        if requests["stop"]:
            save(state)
            return 85 if a.exit_every else 0
        if requests["checkpoint"]:
            checkpoint()
        time.sleep(a.step)
        if requests["stop"] or requests["checkpoint"]:
            continue
        state["count"] += 1
        steps += 1
        save(state)
        if not a.quiet and time.monotonic() - last_print >= 1.0:
            print("counter: run %s, count %d" % (run, state["count"]), flush=True)
            last_print = time.monotonic()
        if a.finish_at and state["count"] >= a.finish_at:
            print("counter: reached %d, done" % state["count"], flush=True)
            return 0
        if a.exit_every and steps >= a.exit_every:
            return 85
        if a.steps and steps >= a.steps:
            print("counter: run %s did its %d steps, count %d" % (run, steps, state["count"]), flush=True)
            return 0


if __name__ == "__main__":
    sys.exit(main())
