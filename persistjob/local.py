"""``persistjob local``: the embedded scheduler for development and demos.

Re-runs ``persistjob run`` the way HTCondor does with ``on_exit_remove =
false``: 85 and 1 run again, 75 runs again after a backoff, 0 is done,
78 and 79 are a hold (stop, show the wrapper's reason).  Each run gets a
fresh checkpoint directory unless one is given, as if it had landed on a new
worker node, so every resume really comes from the store.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

from . import constants as C
from .errors import reason_from_stderr

log = logging.getLogger("persistjob.local")


def run_local(run_args: Sequence[str], payload: Sequence[str], *, name: str, max_runs: int,
              checkpoint_dir: Optional[str] = None, retry_delay: float = 1.0, out=None) -> int:
    out = out or sys.stderr
    job_id = "local#" + name
    backoff = retry_delay
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
            cmd = [sys.executable, "-m", "persistjob", "run", "--job-id", job_id, "--checkpoint-dir", ckdir,
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
            meaning = C.EXIT_MEANINGS.get(code, "failed")
            print("local: run %d exited %d (%s)" % (n, code, meaning), file=out, flush=True)
            if code in (C.EXIT_CONFIG, C.EXIT_CRASHLOOP):
                print("local: job %s held: %s" % (job_id, reason_from_stderr(lines)), file=out, flush=True)
                return code
            if code == C.EXIT_DONE:
                print("local: job %s completed" % job_id, file=out, flush=True)
                return 0
            if stop["sig"] is not None:
                print("local: stopped by %s; the job stays in its store" % signal.Signals(stop["sig"]).name, file=out)
                return code
            if code == C.EXIT_CHECKPOINTED:
                backoff = retry_delay
                continue
            if n < max_runs:
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        print("local: reached --max-runs %d; job %s stays in its store" % (max_runs, job_id), file=out, flush=True)
        return 0 if code in (C.EXIT_CHECKPOINTED, C.EXIT_DONE) else code
    finally:
        for s, h in old.items():
            signal.signal(s, h)
