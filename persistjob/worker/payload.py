"""The payload's process group: start, freeze and thaw, signal, stop with a grace, reap.

The payload runs in its own session (so its whole group can be signalled), under
``setpriv --pdeathsig KILL`` where available (it dies with the wrapper), and the wrapper is a child
subreaper (orphans that left the group come back to it and are stopped too).  Nothing here knows
about checkpoints.
"""

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import ConfigError

log = logging.getLogger("persistjob")


def resolve_payload(argv0: str) -> str:
    """The payload's executable: a path, or a name on PATH; it must be executable."""
    if "/" in argv0:
        path = os.path.abspath(argv0)
        if not os.path.isfile(path):
            raise ConfigError("payload %r not found" % argv0)
    else:
        found = shutil.which(argv0)
        if not found:
            raise ConfigError("payload %r not found on PATH" % argv0)
        path = found
    if not os.access(path, os.X_OK):
        raise ConfigError("payload %r is not executable" % argv0)
    return path


def prepare_checkpoint_dir(path: str) -> str:
    """The payload's checkpoint directory (its working directory, replaced on restore), made and
    checked writable, with its parent (restores are built beside it and swapped in)."""
    ckdir = os.path.abspath(path)
    cwd = os.path.realpath(os.getcwd())
    if (cwd + "/").startswith(os.path.realpath(ckdir).rstrip("/") + "/"):
        raise ConfigError("checkpoint directory %s contains the current directory; give a dedicated "
                          "directory (its content is replaced on restore)" % ckdir)
    try:
        for d in (ckdir, os.path.dirname(ckdir)):
            os.makedirs(d, exist_ok=True)
            probe = os.path.join(d, ".persistjob-probe-%d" % os.getpid())
            with open(probe, "w"):
                pass
            os.unlink(probe)
    except OSError as exc:
        raise ConfigError("checkpoint directory %s (or its parent) is not writable: %s" % (ckdir, exc.strerror)) from None
    return ckdir


def set_child_subreaper() -> None:
    """Orphans of the payload are re-parented to us, so we can stop them."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _children(pid: int) -> List[int]:
    out: List[int] = []
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return out


_PDEATHSIG: Optional[bool] = None


def _pdeathsig_prefix() -> List[str]:
    """``setpriv --pdeathsig KILL --`` when available: the payload dies with us."""
    global _PDEATHSIG
    if _PDEATHSIG is None:
        exe = shutil.which("setpriv")
        ok = False
        if exe:
            try:
                ok = subprocess.run([exe, "--pdeathsig", "KILL", "--", "true"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, timeout=10).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
        _PDEATHSIG = ok
    return ["setpriv", "--pdeathsig", "KILL", "--"] if _PDEATHSIG else []


class Adopted:
    """A child we did not start with Popen (a tree criu restored as our child), with Popen's calls."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None

    def _reap(self, flags: int) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:
                self.returncode = -signal.SIGKILL  # gone without a status we could read
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> Optional[int]:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        if timeout is None:
            return self._reap(0)
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= end:
                raise subprocess.TimeoutExpired("pid %d" % self.pid, timeout)
            time.sleep(0.05)
        return self.returncode


class Payload:
    """The payload's process group.  ``wait(seconds)`` is the wrapper's wake-up-on-signal sleep."""

    def __init__(self, exe: str, args: Sequence[str], cwd: str, wait: Callable[[float], None]) -> None:
        self.exe, self.args, self.cwd, self.wait = exe, list(args), cwd, wait
        self.proc: Optional[Any] = None  # a subprocess.Popen, or an Adopted child
        self.status: Optional[int] = None  # exit status of the last start, once it ended
        self.starts = 0
        #: the process whose group is signalled, when it is not the one started (a namespace's init)
        self.group_pid: Optional[int] = None

    @property
    def started(self) -> bool:
        return self.starts > 0

    @property
    def running(self) -> bool:
        return self.proc is not None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def start(self, env: Dict[str, str], prefix: Sequence[str] = (), stdout: Any = None, stderr: Any = None) -> None:
        cmd = _pdeathsig_prefix() + list(prefix) + [self.exe] + self.args
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=stdout, stderr=stderr)
        self.status = None
        self.group_pid = None
        self.starts += 1
        log.info("payload: started pid %d (%s)", self.proc.pid, " ".join([self.exe] + self.args)[:200])

    def attach(self, proc: Any, group_pid: Optional[int], restored: bool) -> None:
        """Take as the payload a process started otherwise whose exit status is the payload's (criuns' agent),
        signalling ``group_pid``'s group."""
        self.proc = proc
        self.status = None
        self.group_pid = group_pid
        self.starts += 1
        log.info("payload: %s as pid %s", "restored" if restored else "started", group_pid)

    def adopt(self, pid: int) -> None:
        """Take a child that was started otherwise (restored by criu) as the payload."""
        self.proc = Adopted(pid)
        self.status = None
        self.group_pid = pid
        self.starts += 1
        log.info("payload: restored as pid %d", pid)

    def poll(self) -> Optional[int]:
        """The exit status once the payload ended (None while it runs)."""
        if self.proc is None:
            return self.status
        rc = self.proc.poll()
        if rc is not None:
            self.status = rc
            self.proc = None
        return rc

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole group."""
        if self.proc is not None:
            try:
                os.killpg(self.group_pid or self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def signal_leader(self, sig: int) -> bool:
        """Send ``sig`` to the payload process alone; False when it is gone."""
        if self.proc is None:
            return False
        try:
            os.kill(self.group_pid or self.proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, grace: float) -> Optional[int]:
        """TERM the group (and wake it if frozen), wait ``grace``, then KILL; the exit status."""
        if self.proc is None:
            return self.status
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)
        end = time.monotonic() + max(0.0, grace)
        while self.poll() is None and time.monotonic() < end:
            self.wait(min(0.2, end - time.monotonic()))
        if self.proc is not None:
            log.info("payload: still running after %.0fs grace, killing", grace)
            self.signal(signal.SIGKILL)
            self.proc.wait()
            self.poll()
        return self.status

    def kill_everything(self) -> None:
        """KILL the group and every orphan re-parented to us; reap them all."""
        if self.proc is not None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            self.poll()
        for _ in range(3):
            kids = _children(os.getpid())
            if not kids:
                break
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in kids:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
