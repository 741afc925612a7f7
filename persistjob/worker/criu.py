"""CRIU for ``--mode criu`` (worker side): find a usable ``criu``, dump a process tree, restore it as
our child.  The mode itself (when to dump, what to commit) is ``modes.CriuMode``.

criu is found as ``$PERSISTJOB_CRIU``, else ``criu`` on PATH or in an sbin directory when it is 4.0 or
newer, else the private one ``scripts/criu-fetch`` leaves in ``/var/cache/persistjob/criu-trixie``.  As
root it must pass ``criu check``; a job that is not root runs it ``--unprivileged`` in a user namespace
of its own (``criuns.py``).  Anything missing is a configuration error (exit 78, one line): the job is
held with its last good generation kept.
"""

import logging
import os
import re
import shutil
import subprocess
from typing import List, Mapping, Optional, Tuple

from ..errors import ConfigError, PersistJobError

log = logging.getLogger("persistjob")

PRIVATE = "/var/cache/persistjob/criu-trixie/bin/criu"
MIN_MAJOR = 4


class CriuFailed(PersistJobError):
    """A dump or restore failed; the message ends with criu's own first error line."""

    exit_code = 78


class CannotRunHere(ConfigError):
    """This node cannot run the images (its CPU lacks features they use): held, nothing falls back."""


def _major(exe: str) -> int:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    m = re.search(r"Version:\s*(\d+)\.", out)
    return int(m.group(1)) if m else 0


def _check(exe: str) -> Optional[str]:
    """None when ``criu check`` passes, else its last line."""
    try:
        r = subprocess.run([exe, "check"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if r.returncode == 0:
        return None
    lines = (r.stdout + r.stderr).strip().splitlines()
    return lines[-1] if lines else "exit %d" % r.returncode


def find_criu(environ: Mapping[str, str]) -> Tuple[str, bool]:
    """A usable criu, and whether it must run unprivileged (in a user namespace: criuns), or a
    ConfigError saying why there is none."""
    root = os.geteuid() == 0
    given = environ.get("PERSISTJOB_CRIU")
    candidates: List[str] = [given] if given else []
    # criu lives in sbin, often not on a batch job's PATH (HTCondor gives a job none of its own)
    search = os.pathsep.join(p for p in (environ.get("PATH", ""), "/usr/local/sbin:/usr/sbin:/sbin") if p)
    on_path = shutil.which("criu", path=search)
    if not given and on_path and _major(on_path) >= MIN_MAJOR:
        candidates.append(on_path)
    if not given and os.access(PRIVATE, os.X_OK):
        candidates.append(PRIVATE)
    if not root:
        from .criuns import usable

        problem = usable(environ)
        if problem is not None:
            raise ConfigError("--mode criu needs root, or unprivileged user namespaces to run criu in (%s)" % problem)
    why = []
    for exe in candidates:
        # `criu check` as a user wants TCP repair, which --unprivileged does not use: the version is the check
        problem = _check(exe) if root else (None if _major(exe) >= MIN_MAJOR else "not criu %d or newer" % MIN_MAJOR)
        if problem is None:
            return exe, not root
        why.append("%s: %s" % (exe, problem))
    raise ConfigError("--mode criu: no usable criu (%s); scripts/criu-fetch provides one, or set PERSISTJOB_CRIU"
                      % ("; ".join(why) if why else "none found; criu on PATH must be %d.0 or newer" % MIN_MAJOR))


def _last_error(logfile: str) -> str:
    try:
        with open(logfile, errors="replace") as f:
            # the first error says why (the last is "Restoring FAILED"); RLIMIT_NOFILE's is harmless noise
            lines = [ln.strip() for ln in f if "Error" in ln and "RLIMIT_NOFILE" not in ln]
    except OSError:
        return "no log"
    return "%s (%s)" % (lines[0], logfile) if lines else "no error line in %s" % logfile


class Criu:
    def __init__(self, exe: str, logdir: str, unprivileged: bool = False) -> None:
        self.exe, self.logdir = exe, logdir
        self.flags = ["--unprivileged"] if unprivileged else []  # in a user namespace (criuns)
        shutil.rmtree(os.path.join(logdir, "cpuinfo"), ignore_errors=True)  # this run's node, not an earlier one's

    def dump(self, pid: int, images: str, leave_running: bool) -> None:
        """Dump the tree rooted at ``pid`` into ``images`` (emptied first); without ``leave_running``
        criu ends the tree once it is dumped."""
        shutil.rmtree(images, ignore_errors=True)
        os.makedirs(images)
        logfile = os.path.join(self.logdir, "criu-dump.log")
        cmd = [self.exe, "dump", "-t", str(pid), "-D", images, "-o", logfile] + self.flags
        if leave_running:
            cmd.append("--leave-running")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise CriuFailed("criu dump of pid %d failed: %s" % (pid, _last_error(logfile)))
        # criu restore does not compare CPUs by itself: keep this node's CPU features beside the images
        shutil.copyfile(self._cpuinfo(), os.path.join(images, "cpuinfo.img"))

    def _cpuinfo(self) -> str:
        """This node's ``criu cpuinfo dump``, made once per run."""
        where = os.path.join(self.logdir, "cpuinfo")
        if not os.path.exists(os.path.join(where, "cpuinfo.img")):
            os.makedirs(where, exist_ok=True)
            logfile = os.path.join(self.logdir, "criu-cpuinfo-dump.log")
            r = subprocess.run([self.exe, "cpuinfo", "dump", "-D", where, "-o", logfile] + self.flags, capture_output=True,
                               text=True, timeout=60)
            if r.returncode != 0:
                raise CriuFailed("criu cpuinfo dump failed: %s" % _last_error(logfile))
        return os.path.join(where, "cpuinfo.img")

    def check_cpu(self, images: str) -> None:
        """CannotRunHere when this node's CPU lacks features the images were dumped with."""
        if not os.path.exists(os.path.join(images, "cpuinfo.img")):
            return
        logfile = os.path.join(self.logdir, "criu-cpuinfo-check.log")
        r = subprocess.run([self.exe, "cpuinfo", "check", "-D", images, "-o", logfile] + self.flags, capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise CannotRunHere("--mode criu: this node's CPU cannot run the job's images (criu cpuinfo check: %s); "
                                "the job's generations are kept: run it on a node like the one that dumped them"
                                % _last_error(logfile))

    def restore(self, images: str) -> int:
        """Restore the tree as a child of this process; its root's pid."""
        pidfile = os.path.join(self.logdir, "criu-restore.pid")
        logfile = os.path.join(self.logdir, "criu-restore.log")
        try:
            os.unlink(pidfile)  # criu refuses an existing pidfile
        except FileNotFoundError:
            pass
        r = subprocess.run([self.exe, "restore", "-D", images, "-d", "--restore-sibling", "--pidfile", pidfile,
                            "-o", logfile] + self.flags, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise CriuFailed("criu restore failed: %s" % _last_error(logfile))
        with open(pidfile) as f:
            return int(f.read().strip())
