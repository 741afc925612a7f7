"""Job-ad telemetry through chirp (worker side).

With ``want_io_proxy = true`` the wrapper sets ``PersistGeneration``,
``PersistLastCommit``, ``PersistBytes``, ``PersistRuns``, ``PersistLastError``
on its own job ad, so ``condor_q -af PersistGeneration`` shows progress with
no extra service.  It uses the ``htchirp`` module when importable, else
``condor_chirp set_job_attr`` from HTCondor's LIBEXEC.  Outside HTCondor, or
when chirp is not enabled, it does nothing, silently.
"""

import logging
import os
import shutil
import subprocess
from typing import Any, Dict, Mapping, Optional

log = logging.getLogger(__name__)

_LIBEXEC_GUESSES = ("/usr/libexec/condor", "/usr/lib/condor/libexec", "/usr/local/libexec/condor")


def classad_literal(value: Any) -> str:
    """A Python value as a ClassAd literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return '"%s"' % text[:1000]


def _chirp_config(environ: Mapping[str, str]) -> Optional[str]:
    path = environ.get("_CONDOR_CHIRP_CONFIG")
    if path and os.path.exists(path):
        return path
    scratch = environ.get("_CONDOR_SCRATCH_DIR")
    if scratch and os.path.exists(os.path.join(scratch, ".chirp.config")):
        return os.path.join(scratch, ".chirp.config")
    return None


def _find_condor_chirp(environ: Mapping[str, str]) -> Optional[str]:
    found = shutil.which("condor_chirp", path=environ.get("PATH"))
    if found:
        return found
    for d in _LIBEXEC_GUESSES:
        cand = os.path.join(d, "condor_chirp")
        if os.access(cand, os.X_OK):
            return cand
    ccv = shutil.which("condor_config_val", path=environ.get("PATH"))
    if ccv:
        try:
            libexec = subprocess.run([ccv, "LIBEXEC"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        cand = os.path.join(libexec, "condor_chirp")
        if libexec and os.access(cand, os.X_OK):
            return cand
    return None


def _ad_values(path: Optional[str]) -> Dict[str, str]:
    """The job ad's attributes as written in ``$_CONDOR_JOB_AD`` (name, lower case -> literal text)."""
    out: Dict[str, str] = {}
    if not path:
        return out
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                name, sep, value = line.partition("=")
                if sep:
                    out[name.strip().lower()] = value.strip()
    except OSError:
        pass
    return out


class Chirp:
    """Sets job-ad attributes; a no-op outside HTCondor.

    An attribute is set only when its value differs from what the job ad already holds (read from
    ``$_CONDOR_JOB_AD`` at start, then what this run set): every set is an event in the job's user
    log, and thousands of jobs re-setting unchanged values flood it."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        env = dict(os.environ if environ is None else environ)
        self.env = env
        self.config = _chirp_config(env) if env.get("_CONDOR_JOB_AD") else None
        self._client: Any = None
        self._binary: Optional[str] = None
        self.enabled = self.config is not None
        self.known = _ad_values(env.get("_CONDOR_JOB_AD")) if self.enabled else {}
        if self.enabled:
            try:
                import htchirp  # the PyPI htcondor wheel ships it

                self._client = htchirp.HTChirp()
            except Exception:
                self._binary = _find_condor_chirp(env)
                self.enabled = self._binary is not None
        if self.enabled:
            log.debug("chirp: enabled (%s)", "htchirp" if self._client else self._binary)

    def set(self, attrs: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        for name, value in attrs.items():
            literal = classad_literal(value)
            if self.known.get(name.lower()) == literal:
                continue
            try:
                if self._client is not None:
                    with self._client as chirp:
                        chirp.set_job_attr(name, literal)
                else:
                    assert self._binary is not None
                    subprocess.run([self._binary, "set_job_attr", name, literal], env=self.env, timeout=15,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            except Exception as exc:  # telemetry never fails a job
                log.debug("chirp: could not set %s: %s", name, exc)
                continue
            self.known[name.lower()] = literal

    __call__ = set
