"""Where the wrapper reports progress (worker side): HTCondor's job ad through chirp (``chirp.py``),
or Slurm's job comment.  Either shows generation, last commit and last error in the scheduler's own
tools (``condor_q -af PersistGeneration``, ``squeue -o %k``) with no service of persistjob's.

Slurm: the comment is ``persistjob id=NONCE name=NAME store=URL gen=G commit=EPOCH runs=R bytes=B
err=TEXT`` (values URL-quoted, no spaces), set with ``scontrol update JobId=$SLURM_JOB_ID
Comment=...`` only when it changed, so at most once per commit.  The fixed part comes from the batch
script (``PERSISTJOB_SLURM_COMMENT``); ``slurm.py`` reads it back for ``status`` and ``rm``.
"""

import logging
import shutil
import subprocess
from typing import Any, Callable, Dict, Mapping, Optional
from urllib.parse import quote, unquote

from . import constants as C

log = logging.getLogger(__name__)

COMMENT_TAG = "persistjob"
ENV_SLURM_COMMENT = "PERSISTJOB_SLURM_COMMENT"
_SAFE = "/:@#?&=+,.-_~"
SLURM_FIELDS = {C.ATTR_GENERATION: "gen", C.ATTR_LAST_COMMIT: "commit", C.ATTR_RUNS: "runs", C.ATTR_BYTES: "bytes",
                C.ATTR_LAST_ERROR: "err"}


def comment(fields: Mapping[str, Any]) -> str:
    """``persistjob k=v ...``: what persistjob writes into a Slurm job's comment."""
    return " ".join([COMMENT_TAG] + ["%s=%s" % (k, quote(str(v)[:500], safe=_SAFE)) for k, v in fields.items()])


def parse_comment(text: str) -> Optional[Dict[str, str]]:
    words = (text or "").split()
    if not words or words[0] != COMMENT_TAG:
        return None
    return {k: unquote(v) for k, _, v in (w.partition("=") for w in words[1:])}


class SlurmComment:
    """Sets the running Slurm job's comment; a no-op when scontrol is missing."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.env = dict(environ)
        self.job = environ["SLURM_JOB_ID"]
        self.fixed = parse_comment("%s %s" % (COMMENT_TAG, environ.get(ENV_SLURM_COMMENT, ""))) or {}
        self.values: Dict[str, Any] = {}
        self.last: Optional[str] = None
        self.scontrol = shutil.which("scontrol", path=environ.get("PATH"))

    def set(self, attrs: Dict[str, Any]) -> None:
        for name, value in attrs.items():
            if name in SLURM_FIELDS:
                self.values[SLURM_FIELDS[name]] = value
        text = comment({**self.fixed, **self.values})
        if text == self.last or not self.scontrol:
            return
        try:
            subprocess.run([self.scontrol, "update", "JobId=%s" % self.job, "Comment=%s" % text], env=self.env,
                           timeout=15, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            self.last = text
        except Exception as exc:  # telemetry never fails a job
            log.debug("slurm: could not set the job comment: %s", exc)

    __call__ = set


def for_environment(environ: Mapping[str, str]) -> Callable[[Dict[str, Any]], None]:
    """The sink for where this run is: a Slurm job submitted by persistjob, else chirp (a no-op
    outside HTCondor)."""
    if environ.get("SLURM_JOB_ID") and ENV_SLURM_COMMENT in environ:
        return SlurmComment(environ)
    from .chirp import Chirp

    return Chirp(environ)
