"""Checkpoint modes: how a payload's state is made consistent before a snapshot.

One class per mode behind one interface; :func:`make_mode` is the only place a mode's name is
looked at.  A new mode (a transparent one, say) is one more class in :data:`MODES`.

* ``freeze``: SIGSTOP the group, snapshot, SIGCONT; the upload overlaps the payload running on.
* ``signal``: send ``--checkpoint-signal``, wait for the payload to write the marker file, snapshot,
  remove the marker.
* ``exit-code``: no periodic checkpoints: the payload exits 85 after writing its state (HTCondor's
  ``checkpoint_exit_code``); at the end it is asked to stop and its state is committed if it exited
  0 or 85.
* ``criu``: for payloads that cannot checkpoint themselves.  The payload runs as init of its own PID
  namespace (``unshare --pid --fork`` + ``setsid``), its stdout/stderr in append-mode files of the
  checkpoint directory; at a checkpoint the tree is stopped, dumped by CRIU into the checkpoint
  directory's ``.persistjob-criu/`` and the directory snapshotted in the same instant (images and
  files agree), then it goes on; the final checkpoint's dump ends the tree.  The next run restores
  the tree from the images as the wrapper's child; its exit status is the payload's.  The checkpoint
  directory is a fixed path per job, ``/tmp/persistjob-criu/<key>/work``, whatever --checkpoint-dir
  says: CRIU reopens files and the working directory by path.
"""

import fcntl
import hashlib
import logging
import os
import shutil
import signal
import time
from typing import IO, Callable, Dict, Mapping, NamedTuple, Optional, Type, Union

from .. import constants as C
from ..contract import EXIT_CHECKPOINTED, EXIT_DONE
from ..errors import IntegrityError, TryLater
from ..options import MODE_NAMES, RunOptions
from .criu import Criu, CriuFailed, find_criu
from .criuns import AgentCriu
from .payload import Payload

log = logging.getLogger("persistjob")


class Quiet(NamedTuple):
    """How to take one consistent snapshot."""

    staged: bool  # encode new chunks into a spool first, so the payload may run on while they upload
    pause: Optional[Callable[[], None]] = None  # just before the snapshot
    resume: Optional[Callable[[], None]] = None  # just after it


class Mode:
    name = ""
    #: Whether the wrapper checkpoints every --interval (else only when the payload exits 85).
    periodic = True

    def __init__(self, payload: Payload, opts: RunOptions, ckdir: str, environ: Optional[Mapping[str, str]] = None) -> None:
        self.payload, self.opts, self.ckdir = payload, opts, ckdir
        self.environ: Mapping[str, str] = os.environ if environ is None else environ  # the run's environment

    def payload_env(self) -> Dict[str, str]:
        return {}

    def quiesce(self) -> Optional[Quiet]:
        """Prepare a periodic checkpoint; None skips this one."""
        return None

    def quiesce_final(self, budget: float) -> Optional[Quiet]:
        """Prepare the final checkpoint within ``budget`` seconds; None: nothing consistent to commit."""
        return None

    def cleanup(self) -> None:
        pass

    def start(self, env: Dict[str, str]) -> None:
        """Start the payload (or bring it back)."""
        self.payload.start(env)

    def page_files(self, rel: str) -> bool:
        """Whether a file of the checkpoint directory is made of memory pages (chunked at page boundaries)."""
        return False

    def after_claim(self) -> None:
        """Called once this run owns the job in the store, before its restore (TryLater: not now)."""

    def release(self, tidy: bool = False) -> None:
        """The run is over (called last, whatever happened).  ``tidy``: it ended as planned (0, 85) or
        gave way (75: fenced, the store unreachable), with nothing left here worth a look; after a failed
        payload, a hold or an error of ours it is not tidy."""

    def accept_restore(self, generation: int) -> None:
        """Called with a restored generation's files in place: an IntegrityError passes it over for the
        previous retained generation, a ConfigError holds the job."""

    def cold_start(self) -> None:
        """Prepare a fresh start after no generation restored (only criu mode allows it)."""
        raise NotImplementedError(self.name)

    @staticmethod
    def checkpoint_dir(given: str, job_id: str) -> str:
        return given


class FreezeMode(Mode):
    name = "freeze"

    def quiesce(self) -> Optional[Quiet]:
        return Quiet(True, self.payload.freeze, self.payload.thaw)

    def quiesce_final(self, budget: float) -> Optional[Quiet]:
        self.payload.freeze()  # stays frozen: it is stopped after the commit
        return Quiet(False)


class SignalMode(Mode):
    name = "signal"

    @property
    def marker(self) -> str:
        return os.path.join(self.ckdir, C.MARKER_NAME)

    def payload_env(self) -> Dict[str, str]:
        return {C.ENV_MARKER: self.marker}

    def _request(self, timeout: float) -> bool:
        """Signal the payload and wait for its marker file."""
        self.cleanup()
        if not self.payload.signal_leader(self.opts.checkpoint_signal):
            return False
        wait = self.payload.wait
        end = time.monotonic() + timeout
        while not os.path.exists(self.marker):
            if time.monotonic() >= end:
                log.warning("checkpoint: the payload did not write %s within %.0fs; skipping this checkpoint",
                            C.MARKER_NAME, timeout)
                return False
            if self.payload.poll() is not None:
                return False
            wait(min(0.05, end - time.monotonic()))
        return True

    def quiesce(self) -> Optional[Quiet]:
        if not self._request(min(self.opts.marker_timeout, self.opts.interval)):
            return None
        return Quiet(True, None, self.cleanup)

    def quiesce_final(self, budget: float) -> Optional[Quiet]:
        return Quiet(False) if self._request(max(1.0, budget / 2)) else None

    def cleanup(self) -> None:
        try:
            os.unlink(self.marker)
        except FileNotFoundError:
            pass


class ExitCodeMode(Mode):
    name = "exit-code"
    periodic = False

    def quiesce_final(self, budget: float) -> Optional[Quiet]:
        rc = self.payload.stop(max(1.0, budget / 2))
        return Quiet(False) if rc in (EXIT_DONE, EXIT_CHECKPOINTED) else None


CRIU_ROOT = "/tmp/persistjob-criu"


def _descends(pid: int, ancestor: int, depth: int = 5) -> bool:
    """Whether ``ancestor`` is among ``pid``'s first ``depth`` ancestors (read from /proc)."""
    for _ in range(depth):
        try:
            with open("/proc/%d/status" % pid) as f:
                pid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
        except (OSError, StopIteration, ValueError):
            return False
        if pid == ancestor:
            return True
    return False


class CriuMode(Mode):
    name = "criu"
    IMAGES = ".persistjob-criu"
    OUT, ERR = ".persistjob-payload.out", ".persistjob-payload.err"

    def __init__(self, payload: Payload, opts: RunOptions, ckdir: str, environ: Optional[Mapping[str, str]] = None) -> None:
        super().__init__(payload, opts, ckdir, environ)
        exe, self.unprivileged = find_criu(self.environ)
        log.info("criu: %s, %s", exe, "unprivileged, in a user namespace of its own" if self.unprivileged else "as root")
        self.criu: Union[Criu, AgentCriu] = (AgentCriu(exe, os.path.dirname(ckdir), self.environ) if self.unprivileged
                                             else Criu(exe, os.path.dirname(ckdir)))
        self.images = os.path.join(ckdir, self.IMAGES)
        self.restored = False  # a tree restored (stopped) by accept_restore, until start() lets it go on
        self._lock: Optional[IO[str]] = None  # set only while held (the run): this job's directory on this node

    @staticmethod
    def checkpoint_dir(given: str, job_id: str) -> str:
        # CRIU reopens the payload's files and cwd by path: the same path at every run on every node,
        # whatever --checkpoint-dir says (a scheduler's scratch directory changes from run to run)
        # the shared parent is made like /tmp (sticky, everyone's), so that jobs of every user find their place
        try:
            os.mkdir(CRIU_ROOT)
            os.chmod(CRIU_ROOT, 0o1777)
        except FileExistsError:
            pass
        return os.path.join(CRIU_ROOT, hashlib.sha256(job_id.encode()).hexdigest()[:16], "work")

    def page_files(self, rel: str) -> bool:
        return rel.startswith(self.IMAGES + "/pages-") and rel.endswith(".img")

    def after_claim(self) -> None:
        """The checkpoint directory is one fixed path per job on a node: an older instance of the job on this
        node (a disconnected starter, a wrapper the scheduler lost) still has its tree there.  This run's
        claim has superseded it in the store; its tree is ended here before the restore replaces the
        directory under it, and its wrapper, fenced, lets the lock go."""
        base = os.path.dirname(self.ckdir)
        f = open(os.path.join(base, "lock"), "a+")
        try:
            if self._take(f):
                return
            f.seek(0)
            held = dict(part.split("=", 1) for part in f.read().split() if "=" in part)
            wrapper, tree = int(held.get("wrapper", 0) or 0), int(held.get("payload", 0) or 0)
            log.warning("criu: an older instance of this job still runs on this node (wrapper pid %d, payload pid %d); "
                        "this claim superseded it: ending its payload", wrapper, tree)
            # the wrapper is alive (it holds the lock); its recorded payload pid is only trusted while it descends from it
            for pid, wait in ((tree if _descends(tree, wrapper) else 0, 30.0), (wrapper, 10.0)):
                if pid > 1 and pid != os.getpid():
                    try:
                        os.kill(pid, signal.SIGKILL)  # the tree's init: its whole PID namespace goes with it
                    except OSError:
                        pass
                end = time.monotonic() + wait
                while time.monotonic() < end:
                    if self._take(f):
                        return
                    time.sleep(0.1)
        finally:
            if self._lock is not f:
                f.close()
        raise TryLater("criu: an older instance of this job on this node (wrapper pid %d) still holds %s" % (wrapper, base))

    def _take(self, f: IO[str]) -> bool:
        """Hold the lock of ``f`` if it is free: from then on ``self._lock`` (which is set only while
        held) is ``f``, and it names this wrapper."""
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        self._lock = f
        self._write_lock()
        return True

    def _write_lock(self, payload: int = 0) -> None:
        if self._lock is None:
            return
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write("wrapper=%d payload=%d\n" % (os.getpid(), payload))
        self._lock.flush()

    def release(self, tidy: bool = False) -> None:
        """The fixed directory is never read again (the job's next run on any node restores it from the
        store, or starts it anew): a tidy end removes it, a dump of the whole tree, under the lock (a
        newer instance on this node waits for it before restoring); the lock file and criu's logs stay."""
        if isinstance(self.criu, AgentCriu):
            self.criu.stop()
        if self._lock is not None:
            if tidy:
                shutil.rmtree(self.ckdir, ignore_errors=True)
            self._lock.close()  # the lock goes with the descriptor
            self._lock = None

    def accept_restore(self, generation: int) -> None:
        # the tree is restored here, stopped as it was dumped, so that images criu cannot restore pass the
        # generation over for the previous one, like damaged chunks do; a CPU that cannot run them holds
        self.restored = False
        if not os.path.exists(os.path.join(self.images, "inventory.img")):
            return  # committed after the payload had ended: it starts anew
        self.criu.check_cpu(self.images)
        os.chmod(self.ckdir, 0o700)
        try:
            pid = self.criu.restore(self.images)
        except CriuFailed as exc:
            raise IntegrityError("its CRIU images do not restore: %s" % exc.message) from None
        # ours from now on: a stop before start() dumps it again
        if isinstance(self.criu, AgentCriu):
            self.payload.attach(self.criu.proc, pid, restored=True)
        else:
            self.payload.adopt(pid)
        self.restored = True
        self._write_lock(pid)

    def cold_start(self) -> None:
        """--criu-cold-start after no generation restored: the payload starts anew in an empty directory."""
        self.restored = False
        for name in os.listdir(self.ckdir):
            path = os.path.join(self.ckdir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)

    def start(self, env: Dict[str, str]) -> None:
        os.chmod(self.ckdir, 0o700)  # CRIU checks the mode of the cwd it reopens; a restored directory is 0700
        if self.restored:
            self.restored = False
            self.payload.thaw()  # dumped while stopped: it comes back stopped
            return
        if isinstance(self.criu, AgentCriu):
            proc = self.criu.start([self.payload.exe] + self.payload.args, env, self.ckdir,
                                   os.path.join(self.ckdir, self.OUT), os.path.join(self.ckdir, self.ERR))
            self.payload.attach(proc, self.criu.payload_pid, restored=False)
            self._write_lock(self.criu.payload_pid or 0)
            return
        out = open(os.path.join(self.ckdir, self.OUT), "a")
        err = open(os.path.join(self.ckdir, self.ERR), "a")
        try:
            self.payload.start(env, prefix=("unshare", "--pid", "--fork", "--kill-child", "setsid"), stdout=out,
                               stderr=err)
        finally:
            out.close()
            err.close()
        self.payload.group_pid = self._init_pid()
        self._write_lock(self.payload.group_pid or 0)

    def _init_pid(self) -> Optional[int]:
        """The payload's host pid: the child of unshare (init of the new PID namespace)."""
        from .payload import _children

        assert self.payload.proc is not None
        end = time.monotonic() + 10
        while time.monotonic() < end:
            kids = _children(self.payload.proc.pid)
            if kids:
                return kids[0]
            if self.payload.proc.poll() is not None:
                return None
            time.sleep(0.01)
        return None

    def _dump(self, leave_running: bool) -> None:
        pid = self.payload.group_pid
        if pid is None:
            raise RuntimeError("no payload process to dump")
        self.payload.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        self.criu.dump(pid, self.images, leave_running)
        log.info("criu: dumped pid %d in %.2fs%s", pid, time.monotonic() - t0, "" if leave_running else " (tree ended)")

    def quiesce(self) -> Optional[Quiet]:
        if self.payload.poll() is not None:
            return None
        return Quiet(True, lambda: self._dump(True), self.payload.thaw)

    def quiesce_final(self, budget: float) -> Optional[Quiet]:
        if self.payload.poll() is not None:
            return None
        self._dump(False)
        return Quiet(False)


MODES: Dict[str, Type[Mode]] = {m.name: m for m in (FreezeMode, SignalMode, ExitCodeMode, CriuMode)}
assert tuple(MODES) == MODE_NAMES, "persistjob.options.MODE_NAMES lists the modes of this module"


def make_mode(payload: Payload, opts: RunOptions, ckdir: str, environ: Optional[Mapping[str, str]] = None) -> Mode:
    return MODES[opts.mode](payload, opts, ckdir, environ)


def checkpoint_dir(opts: RunOptions, job_id: str) -> str:
    """Where the payload's checkpoint directory is, for this mode (criu needs a fixed path per job)."""
    return MODES[opts.mode].checkpoint_dir(opts.checkpoint_dir, job_id)
