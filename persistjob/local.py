"""``persistjob local``: the embedded scheduler for development and demos.

Re-runs ``persistjob run`` as a scheduler would, by the exit-code contract
(``contract.py``): "rerun" codes run again at once, "rerun-later" ones after a
delay that doubles with each consecutive one, "complete" ends the job, "hold"
codes stop with the wrapper's reason (a human is watching: there is no
automatic release here).  Each run gets a fresh checkpoint directory unless
one is given, as if it had landed on a new worker node, so every resume
really comes from the store.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional, Sequence

from . import contract as X
from .errors import reason_from_stderr
from .selfexec import self_command

log = logging.getLogger("persistjob.local")


def run_local(run_args: Sequence[str], payload: Sequence[str], *, name: str, max_runs: int,
              checkpoint_dir: Optional[str] = None, retry_delay: float = X.LOCAL_RETRY_BASE, out=None,
              sleep: Callable[[float], None] = time.sleep) -> int:
    out = out or sys.stderr
    job_id = "local#" + name
    later = 0  # consecutive "rerun-later" exits
    stop = {"sig": None}
    child: List[subprocess.Popen] = []

    def forward(signum, frame):  # type: ignore[no-untyped-def]
        stop["sig"] = signum
        if child:
            try:
                child[0].send_signal(signum)
            except ProcessLookupError:
                pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        for n in range(1, max_runs + 1):
            tmp = None
            ckdir = checkpoint_dir
            if ckdir is None:
                tmp = tempfile.mkdtemp(prefix="persistjob-local-")
                ckdir = os.path.join(tmp, "checkpoint")
            cmd = [*self_command(), "run", "--job-id", job_id, "--checkpoint-dir", ckdir,
                   *run_args, "--", *payload]
            print("local: run %d of %d for job %s" % (n, max_runs, job_id), file=out, flush=True)
            lines: List[str] = []
            try:
                proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
                child[:] = [proc]
                assert proc.stderr is not None
                for line in proc.stderr:
                    out.write(line)
                    out.flush()
                    lines.append(line)
                    del lines[:-20]
                code = proc.wait()
            finally:
                child[:] = []
                if tmp:
                    shutil.rmtree(tmp, ignore_errors=True)
            rule = X.rule(code)
            print("local: run %d exited %d (%s)" % (n, code, rule.name), file=out, flush=True)
            if rule.action in (X.HOLD, X.HOLD_RELEASE):
                print("local: job %s held: %s" % (job_id, reason_from_stderr(lines)), file=out, flush=True)
                return code
            if rule.action == X.COMPLETE:
                print("local: job %s completed" % job_id, file=out, flush=True)
                return 0
            if stop["sig"] is not None:
                print("local: stopped by %s; the job stays in its store" % signal.Signals(stop["sig"]).name, file=out)
                return code
            if rule.action == X.RERUN:
                later = 0
                continue
            later += 1
            if n < max_runs:
                delay = X.retry_delay(retry_delay, later, cap=30.0)
                print("local: run %d again in %.0fs" % (n + 1, delay), file=out, flush=True)
                sleep(delay)
        print("local: reached --max-runs %d; job %s stays in its store" % (max_runs, job_id), file=out, flush=True)
        return 0 if code in (X.EXIT_CHECKPOINTED, X.EXIT_DONE) else code
    finally:
        for s, h in old.items():
            signal.signal(s, h)
