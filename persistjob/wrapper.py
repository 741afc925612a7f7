"""The worker-node wrapper: ``persistjob run``.

Exit-code contract (HTCondor and Work Queue policies are built on it; the
constants live in ``constants.py``):

* 0  the payload finished and its final state was committed
* 1  the payload failed; the last good generation is kept
* 75 try later: fenced by another instance, or storage unreachable after
     bounded retries (never a fresh start then)
* 78 configuration or bad input (one line on stderr says which)
* 79 crash loop: K consecutive runs failed without a new commit
* 85 checkpointed, run me again (lifetime over or evicted)

Flow: identity -> claim (fenced append to the job's log) -> restore the
newest intact generation -> run the payload in its own process group with
its working directory set to the checkpoint directory -> checkpoint every
``interval`` (modes ``freeze``, ``signal``, ``exit-code``) -> at
``lifetime`` or on SIGTERM take a final checkpoint within the grace time,
stop the process group, exit 85.  One line per event goes to stderr.

Runs on Python 3.9+ with the standard library plus boto3 (for s3://),
tenacity and zstandard.
"""

import ctypes
import logging
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import constants as C
from .checkpoint import Checkpointer, JobLog, Record, collect_garbage, host_name, retained_after
from .errors import (
    ConfigError,
    Fenced,
    IntegrityError,
    NoIntactGeneration,
    PersistJobError,
    StorageConfigError,
    StorageError,
    StorageUnavailable,
    TryLater,
)
from .identity import host_and_slot, resolve_job_id
from .storage import Backend, RetryingBackend, get_backend

log = logging.getLogger("persistjob")

MODES = ("freeze", "signal", "exit-code")


@dataclass(frozen=True)
class RunOptions:
    store: str
    payload: Tuple[str, ...]
    job_id: Optional[str] = None
    checkpoint_dir: str = "persistjob-checkpoint"
    interval: float = C.DEFAULT_INTERVAL
    lifetime: float = C.DEFAULT_LIFETIME
    mode: str = "freeze"
    vacate_grace: float = C.DEFAULT_VACATE_GRACE
    keep: int = C.DEFAULT_KEEP
    crash_limit: int = C.DEFAULT_CRASH_LIMIT
    storage_timeout: float = C.DEFAULT_STORAGE_TIMEOUT
    chunk_size: int = C.DEFAULT_CHUNK_SIZE
    checkpoint_signal: int = int(signal.SIGUSR1)
    marker_timeout: float = 600.0
    lease_check: float = 60.0
    gc_grace: float = 3600.0
    workers: int = 8

    def __post_init__(self) -> None:
        if not self.payload:
            raise ConfigError("no payload given (persistjob run --store URL -- PAYLOAD ARGS...)")
        if self.mode not in MODES:
            raise ConfigError("unknown mode %r (choose freeze, signal or exit-code)" % self.mode)
        for name in ("interval", "lifetime", "vacate_grace", "storage_timeout", "marker_timeout", "lease_check"):
            if getattr(self, name) <= 0:
                raise ConfigError("--%s must be positive" % name.replace("_", "-"))
        if self.gc_grace < 0:
            raise ConfigError("--gc-grace must not be negative")
        if self.keep < 1 or self.crash_limit < 1 or self.workers < 1:
            raise ConfigError("--keep, --crash-limit and --workers must be at least 1")
        if not 4096 <= self.chunk_size <= (64 << 20):
            raise ConfigError("--chunk-size must be between 4k and 64M")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return "%d B" % n  # pragma: no cover


def resolve_payload(argv0: str) -> str:
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


def _set_child_subreaper() -> None:
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


@dataclass
class RunInfo:
    """Per-run accounting, written to ``runs/`` in the store."""

    job_id: str
    run: int
    claim_seq: int
    host: str
    slot: str
    pid: int
    start: float
    end: Optional[float] = None
    exit_code: Optional[int] = None
    reason: str = ""
    restored_generation: int = 0
    fallbacks: List[Dict[str, Any]] = field(default_factory=list)
    commits: int = 0
    generation: int = 0
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0
    payload_starts: int = 0
    cpu_user: float = 0.0
    cpu_system: float = 0.0


class Wrapper:
    """One run of a persistent job on a worker node."""

    def __init__(self, opts: RunOptions, environ: Optional[Mapping[str, str]] = None, *,
                 backend: Optional[Backend] = None, telemetry: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        self.opts = opts
        self.environ = dict(os.environ if environ is None else environ)
        self._backend = backend
        if telemetry is None:
            from .chirp import Chirp

            telemetry = Chirp(self.environ)
        self.telemetry = telemetry
        self.stop_reason: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        self.mine: Record
        self.retained: Tuple[Tuple[int, str], ...] = ()
        self.info: Optional[RunInfo] = None
        self.ckpt: Optional[Checkpointer] = None
        self._wake_r = self._wake_w = -1
        self._old_handlers: Dict[int, Any] = {}
        self._old_wakeup = -1
        self._payload_status: Optional[int] = None

    # ------------------------------------------------------------ plumbing
    def _on_stop(self, signum: int, frame: Any) -> None:
        if self.stop_reason is None:
            self.stop_reason = "evicted (%s)" % signal.Signals(signum).name

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_stop)
        self._old_handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda s, f: None)

    def _restore_signals(self) -> None:
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        if self._wake_w >= 0:
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def _wait(self, timeout: float) -> None:
        if timeout > 0:
            try:
                select.select([self._wake_r], [], [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                pass
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _cancelled(self) -> bool:
        return self.stop_reason is not None

    # ------------------------------------------------------------ payload
    def _start_payload(self, exe: str, ckdir: str, generation: int) -> None:
        assert self.info is not None
        env = dict(self.environ)
        env.update({
            C.ENV_JOB_ID: self.job_id,
            C.ENV_CHECKPOINT_DIR: ckdir,
            C.ENV_RUN: str(self.info.run),
            C.ENV_GENERATION: str(generation),
        })
        if self.opts.mode == "signal":
            env[C.ENV_MARKER] = os.path.join(ckdir, C.MARKER_NAME)
        cmd = _pdeathsig_prefix() + [exe] + list(self.opts.payload[1:])
        self.proc = subprocess.Popen(cmd, cwd=ckdir, env=env, start_new_session=True, stdin=subprocess.DEVNULL)
        self._payload_status = None
        self.info.payload_starts += 1
        log.info("payload: started pid %d (%s)", self.proc.pid, " ".join(self.opts.payload)[:200])

    def _poll(self) -> Optional[int]:
        if self.proc is None:
            return self._payload_status
        rc = self.proc.poll()
        if rc is not None:
            self._payload_status = rc
            self.proc = None
        return rc

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def _stop_payload(self, grace: float) -> Optional[int]:
        """TERM the group (and wake it if frozen), wait ``grace``, then KILL."""
        if self.proc is None:
            return self._payload_status
        self._signal_group(signal.SIGTERM)
        self._signal_group(signal.SIGCONT)
        end = time.monotonic() + max(0.0, grace)
        while self._poll() is None and time.monotonic() < end:
            self._wait(min(0.2, end - time.monotonic()))
        if self.proc is not None:
            log.info("payload: still running after %.0fs grace, killing", grace)
            self._signal_group(signal.SIGKILL)
            self.proc.wait()
            self._poll()
        return self._payload_status

    def _kill_everything(self) -> None:
        if self.proc is not None:
            self._signal_group(signal.SIGCONT)
            self._signal_group(signal.SIGKILL)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            self._poll()
        # Processes that left the group but were re-parented to us.
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

    # ------------------------------------------------------------ main
    def run(self) -> int:
        try:
            return self._run()
        except PersistJobError as exc:
            # The one-line reason reaches the job ad, so a hold (78) names it.
            self.telemetry({C.ATTR_LAST_ERROR: exc.message})
            raise
        finally:
            self._kill_everything()
            if self.ckpt is not None:
                self.ckpt.close()
            self._restore_signals()

    def _run(self) -> int:
        o = self.opts
        self.job_id = resolve_job_id(o.job_id, self.environ)
        exe = resolve_payload(o.payload[0])
        ckdir = os.path.abspath(o.checkpoint_dir)
        cwd = os.path.realpath(os.getcwd())
        if (cwd + "/").startswith(os.path.realpath(ckdir).rstrip("/") + "/"):
            raise ConfigError("checkpoint directory %s contains the current directory; give a dedicated "
                              "directory (its content is replaced on restore)" % ckdir)
        self._check_writable(ckdir)
        inner = self._backend if self._backend is not None else get_backend(o.store)
        self.store = RetryingBackend(inner, o.storage_timeout, cancel=self._cancelled)
        self.joblog = JobLog(self.store, self.job_id)
        self.ckpt = Checkpointer(self.store, self.joblog.prefix, ckdir, chunk_size=o.chunk_size, workers=o.workers,
                                 cancel=self._cancelled)
        _set_child_subreaper()
        self._install_signals()

        # -- claim
        try:
            head = self.joblog.head()
            inherited = head.crash_streak + (1 if head.kind == "claim" else 0)
            self.mine = self.joblog.append(head, "claim", run=head.run + 1, crash_streak=inherited,
                                           data={"host": host_name(), "pid": os.getpid()})
        except StorageUnavailable as exc:
            raise TryLater("storage unreachable after %.0fs of retries (%s); not starting fresh" % (o.storage_timeout, exc)) from None
        except Fenced:
            log.info("fenced: another instance claimed job %s at the same moment; exiting without writing", self.job_id)
            return C.EXIT_TEMPFAIL
        if self.mine.retained:
            self.retained = self.mine.retained
        elif self.mine.manifest:
            self.retained = ((self.mine.generation, self.mine.manifest),)
        self.info = RunInfo(self.job_id, self.mine.run, self.mine.seq, host_name(), host_and_slot(self.environ),
                            os.getpid(), time.time(), generation=self.mine.generation)
        log.info("claim: job %s run %d (log record %d, key %s) on %s", self.job_id, self.mine.run, self.mine.seq,
                 self.joblog.key[:12], host_name())

        # -- restore
        try:
            generation = self._restore()
        except StorageUnavailable as exc:
            raise TryLater("storage unreachable during restore (%s); not starting fresh" % exc) from None
        self.info.restored_generation = generation
        self._put_run("running")
        self.telemetry({C.ATTR_RUNS: self.mine.run, C.ATTR_GENERATION: self.mine.generation,
                        C.ATTR_STORE: self.store.url})
        if self.stop_reason:
            return self._finish(self.stop_reason, o.vacate_grace * 0.8)

        # -- run
        started = time.monotonic()
        life_end = started + o.lifetime
        next_ckpt = started + o.interval
        next_lease = started + o.lease_check
        self._start_payload(exe, ckdir, generation)
        while True:
            now = time.monotonic()
            wake = min(life_end, next_lease, next_ckpt if o.mode != "exit-code" else life_end)
            if self._poll() is None and self.stop_reason is None:
                self._wait(wake - now)
            if self.stop_reason is not None:
                return self._finish(self.stop_reason, o.vacate_grace * 0.8)
            rc = self._poll()
            if rc is not None:
                if rc == C.EXIT_CHECKPOINTED:
                    code = self._commit_or_fence(staged=False)
                    if code is not None:
                        return code
                    if time.monotonic() < life_end and self.stop_reason is None:
                        self._start_payload(exe, ckdir, self.mine.generation)
                        continue
                    return self._end(C.EXIT_CHECKPOINTED, "lifetime over" if self.stop_reason is None else self.stop_reason)
                if rc == 0:
                    code = self._commit_or_fence(staged=False, final=True)
                    if code is not None:
                        return code
                    return self._end(C.EXIT_DONE, "payload finished")
                return self._crashed(rc)
            now = time.monotonic()
            if now >= life_end:
                return self._finish("lifetime over", o.storage_timeout + o.vacate_grace)
            if o.mode != "exit-code" and now >= next_ckpt:
                code = self._periodic()
                if code is not None:
                    return code
                next_ckpt = time.monotonic() + o.interval
            if now >= next_lease:
                next_lease = now + o.lease_check
                try:
                    if self.joblog.superseded(self.mine):
                        return self._fenced("a newer instance claimed the job")
                except StorageError as exc:
                    log.debug("lease check failed: %s", exc)

    def _check_writable(self, ckdir: str) -> None:
        try:
            os.makedirs(ckdir, exist_ok=True)
            probe = os.path.join(ckdir, ".persistjob-probe-%d" % os.getpid())
            with open(probe, "w"):
                pass
            os.unlink(probe)
            parent_probe = os.path.join(os.path.dirname(ckdir), ".persistjob-probe-%d" % os.getpid())
            with open(parent_probe, "w"):
                pass
            os.unlink(parent_probe)
        except OSError as exc:
            raise ConfigError("checkpoint directory %s (or its parent) is not writable: %s" % (ckdir, exc.strerror)) from None

    def _restore(self) -> int:
        assert self.ckpt is not None and self.info is not None
        candidates = list(self.retained)
        if not candidates:
            log.info("restore: no checkpoint yet, starting fresh")
            return 0
        damaged: List[str] = []
        for gen, mid in candidates:
            try:
                stats = self.ckpt.restore(mid)
            except IntegrityError as exc:
                log.warning("restore: generation %d is damaged (%s); falling back to the previous generation", gen, exc)
                self.info.fallbacks.append({"generation": gen, "manifest": mid, "error": str(exc)})
                damaged.append(mid)
                continue
            self.info.bytes_downloaded += stats.transferred
            self.retained = tuple(r for r in self.retained if r[1] not in damaged)
            log.info("restore: generation %d (%d files, %s, %s downloaded, %.2fs)", gen, stats.files,
                     _fmt_bytes(stats.bytes), _fmt_bytes(stats.transferred), stats.seconds)
            return gen
        self.info.reason = "no intact generation"
        self._put_run("failed")
        raise NoIntactGeneration("none of the %d retained generations restored intact (newest: %s); refusing to start "
                                 "fresh; inspect with 'persistjob checkpoint verify'" % (len(candidates), self.info.fallbacks[0]["error"]))

    # ------------------------------------------------------------ checkpoints
    def _commit(self, staged: bool, frozen: Optional[Callable[[], None]] = None, resume: Optional[Callable[[], None]] = None) -> None:
        """Snapshot (payload quiet), resume it, upload, append the commit record."""
        assert self.ckpt is not None and self.info is not None
        t0 = time.monotonic()
        if frozen:
            frozen()
        try:
            snap = self.ckpt.snapshot(os.path.dirname(self.ckpt.root) if staged else None)
        finally:
            frozen_for = time.monotonic() - t0
            if resume:
                resume()
        manifest_id = self.ckpt.upload(snap)
        gen = self.mine.generation + 1
        retained = retained_after((gen, manifest_id), self.retained, self.opts.keep)
        st = snap.stats
        self.mine = self.joblog.append(self.mine, "commit", generation=gen, manifest=manifest_id, retained=retained,
                                       crash_streak=0, data={"files": st.files, "bytes": st.bytes, "uploaded": st.transferred,
                                                             "seconds": round(time.monotonic() - t0, 3)})
        self.retained = retained
        self.info.commits += 1
        self.info.generation = gen
        self.info.bytes_uploaded += st.transferred
        log.info("commit: generation %d (%d files, %s, %s uploaded in %d new chunks, %.2fs, payload paused %.2fs)",
                 gen, st.files, _fmt_bytes(st.bytes), _fmt_bytes(st.transferred), st.chunks_new,
                 time.monotonic() - t0, frozen_for if (frozen or staged) else 0.0)
        self.telemetry({C.ATTR_GENERATION: gen, C.ATTR_LAST_COMMIT: int(time.time()), C.ATTR_BYTES: st.bytes})
        if self.info.commits % (4 * self.opts.keep) == 0:
            self._gc()

    def _commit_or_fence(self, staged: bool, final: bool = False, **kw: Any) -> Optional[int]:
        """Commit; on fencing stop and return 75; on storage failure log and go on (None)."""
        try:
            self._commit(staged, **kw)
        except Fenced:
            return self._fenced("the commit lost the race for the next log record")
        except StorageUnavailable as exc:
            log.warning("commit failed after retries (%s); the payload goes on, last good generation is %d", exc, self.mine.generation)
            self.telemetry({C.ATTR_LAST_ERROR: "commit failed: %s" % exc})
            if final:
                return self._end(C.EXIT_TEMPFAIL, "final commit failed: %s" % exc)
        except IntegrityError as exc:  # cancelled by SIGTERM mid-upload
            log.warning("commit abandoned: %s", exc)
        return None

    def _periodic(self) -> Optional[int]:
        o = self.opts
        if o.mode == "freeze":
            return self._commit_or_fence(True, frozen=lambda: self._signal_group(signal.SIGSTOP),
                                         resume=lambda: self._signal_group(signal.SIGCONT))
        # signal mode
        if not self._request_marker(min(o.marker_timeout, o.interval)):
            return None
        return self._commit_or_fence(True, resume=self._clear_marker)

    def _marker(self) -> str:
        assert self.ckpt is not None
        return os.path.join(self.ckpt.root, C.MARKER_NAME)

    def _clear_marker(self) -> None:
        try:
            os.unlink(self._marker())
        except FileNotFoundError:
            pass

    def _request_marker(self, timeout: float) -> bool:
        self._clear_marker()
        if self.proc is None:
            return False
        try:
            os.kill(self.proc.pid, self.opts.checkpoint_signal)
        except ProcessLookupError:
            return False
        end = time.monotonic() + timeout
        while not os.path.exists(self._marker()):
            if time.monotonic() >= end:
                log.warning("checkpoint: the payload did not write %s within %.0fs; skipping this checkpoint",
                            C.MARKER_NAME, timeout)
                return False
            if self._poll() is not None:
                return False
            self._wait(min(0.05, end - time.monotonic()))
        return True

    def _finish(self, reason: str, budget: float) -> int:
        """Final checkpoint within ``budget`` seconds, stop the payload, exit 85."""
        o = self.opts
        deadline = time.monotonic() + budget
        self.store.deadline = deadline
        self.store.cancel = lambda: False  # the final checkpoint must not be cancelled by the signal itself
        if self.ckpt is not None:
            self.ckpt.cancel = lambda: False
        log.info("stop: %s; taking a final checkpoint (budget %.0fs)", reason, budget)
        code: Optional[int] = None
        if self.proc is None and self._payload_status is None:
            pass  # evicted before the payload started: nothing new to save
        elif o.mode == "freeze":
            if self.proc is not None:
                self._signal_group(signal.SIGSTOP)
            code = self._commit_or_fence(False)
        elif o.mode == "signal":
            if self._request_marker(max(1.0, (deadline - time.monotonic()) / 2)):
                code = self._commit_or_fence(False)
        else:  # exit-code: ask the payload to stop; commit if it left a checkpoint (85) or finished (0)
            rc = self._stop_payload(max(1.0, (deadline - time.monotonic()) / 2))
            if rc in (0, C.EXIT_CHECKPOINTED):
                code = self._commit_or_fence(False)
        if code is not None:
            return code
        self._stop_payload(max(0.5, min(10.0, deadline - time.monotonic())))
        self._clear_marker()
        return self._end(C.EXIT_CHECKPOINTED, reason)

    def _crashed(self, rc: int) -> int:
        assert self.info is not None
        what = ("killed by signal %s" % signal.Signals(-rc).name) if rc < 0 else ("exited %d" % rc)
        streak = 0 if self.info.commits else self.mine.crash_streak + 1
        if streak >= self.opts.crash_limit:
            return self._end(C.EXIT_CRASHLOOP, "crash loop: payload %s; %d consecutive runs failed without a new "
                             "commit" % (what, streak), crash_streak=streak)
        return self._end(C.EXIT_PAYLOAD_FAILED, "payload %s (failed run %d of %d allowed before hold)" %
                         (what, streak, self.opts.crash_limit), crash_streak=streak)

    def _fenced(self, why: str) -> int:
        self._kill_everything()
        log.info("fenced: %s; job %s is owned by another instance; stopping without writing", why, self.job_id)
        self.telemetry({C.ATTR_LAST_ERROR: "fenced: %s" % why})
        # A note beside the log (never in it) lets `persistjob status` flag FENCED.
        try:
            self.store.deadline = time.monotonic() + 10
            self.joblog.note_fenced(self.mine.seq, why)
        except StorageError:
            pass
        return C.EXIT_TEMPFAIL

    def _end(self, code: int, reason: str, **changes: Any) -> int:
        assert self.info is not None
        self._stop_payload(min(10.0, self.opts.vacate_grace))
        try:
            self.mine = self.joblog.append(self.mine, "end", data={"reason": reason, "exit_code": code},
                                           **changes)
        except Fenced:
            return self._fenced("another instance appended to the log")
        except StorageError as exc:
            log.warning("could not record the end of the run: %s", exc)
        self.info.reason = reason
        self.info.exit_code = code
        if self.info.commits:
            self._gc()
        self._put_run("ended")
        if code in (C.EXIT_CONFIG, C.EXIT_CRASHLOOP, C.EXIT_PAYLOAD_FAILED):
            self.telemetry({C.ATTR_LAST_ERROR: reason})
        log.info("exit %d (%s): %s", code, C.EXIT_MEANINGS.get(code, "?"), reason)
        return code

    def _gc(self) -> None:
        try:
            stats = collect_garbage(self.store, self.joblog.prefix, self.retained, grace=self.opts.gc_grace,
                                    still_owner=lambda: not self.joblog.superseded(self.mine))
        except StorageError as exc:
            log.warning("gc: skipped (%s)", exc)
            return
        if stats["manifests"] or stats["chunks"]:
            log.info("gc: deleted %d manifests and %d chunks (%s)", stats["manifests"], stats["chunks"], _fmt_bytes(stats["bytes"]))

    def _put_run(self, state: str) -> None:
        assert self.info is not None
        if state != "running":
            self.info.end = time.time()
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.info.cpu_user, self.info.cpu_system = round(ru.ru_utime, 3), round(ru.ru_stime, 3)
        body = dict(self.info.__dict__, state=state)
        try:
            self.joblog.put_run(self.info.run, self.info.claim_seq, body)
        except StorageError as exc:
            log.warning("could not write the run record: %s", exc)


def run(opts: RunOptions, environ: Optional[Mapping[str, str]] = None) -> int:
    """Run one lifetime of a persistent job; return the exit code."""
    return Wrapper(opts, environ).run()


__all__ = ["RunOptions", "Wrapper", "run", "MODES", "PersistJobError", "StorageConfigError"]
