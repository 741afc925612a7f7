"""The worker-node wrapper: ``persistjob run``.

Exit codes (the contract every executor's policy is derived from: ``contract.py``):
0 done, 1 payload failed, 75 try later (fenced, or storage unreachable: never a fresh start then),
78 configuration error, 79 crash loop, 85 checkpointed (run me again).

One run, in the README's six steps:

1. **identity**: ``--job-id``, else ``GlobalJobId`` from ``$_CONDOR_JOB_AD``, else ``$PERSISTJOB_JOB_ID``;
2. **claim** the job in its fenced log (``repo``): losing the race means another instance owns it;
3. **restore** the newest intact generation into the checkpoint directory (falling back past damage);
4. **run** the payload in its own process group (``worker.payload``), working directory = the
   checkpoint directory;
5. **checkpoint** every ``--interval``, the payload made consistent by its mode (``worker.modes``);
6. **end**: at ``--lifetime`` or on SIGTERM a final checkpoint within the grace, the payload stopped,
   an end record and a run record, and the exit code.

One line per event goes to stderr.  Runs on Python 3.9+ with the standard library plus boto3 (for
s3://), tenacity and zstandard.
"""

import logging
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from . import constants as C
from . import contract as X
from .codec import check_codec
from .errors import (
    ConfigError,
    Fenced,
    IntegrityError,
    NoIntactGeneration,
    PersistJobError,
    StorageError,
    StorageUnavailable,
    TryLater,
)
from .identity import format_bytes, host_and_slot, resolve_job_id
from .options import RunOptions
from .repo import JobRepo, host_name
from .storage import Backend, RetryingBackend, get_backend
from .worker.modes import Quiet, checkpoint_dir, make_mode
from .worker.payload import Payload, prepare_checkpoint_dir, resolve_payload, set_child_subreaper
from .worker.signals import StopSignals

log = logging.getLogger("persistjob")


@dataclass
class RunInfo:
    """Per-run accounting, written to the store's run records."""

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
    software: Dict[str, str] = field(default_factory=lambda: software())
    #: The wrapper's own lines of this run (the last LOG_LINES): every run's story stays in the store,
    #: also where the scheduler rewrites the job's error file at each run (grid jobs, Slurm requeues).
    log: List[str] = field(default_factory=list)


LOG_LINES = 200


class _RunLog(logging.Handler):
    def __init__(self, lines: List[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
            del self.lines[:-LOG_LINES]
        except Exception:  # pragma: no cover - logging must never break the run
            pass


def software() -> Dict[str, str]:
    """What ran: persistjob, the Python, and where they came from (a bundle, or an installation)."""
    import platform
    import sys

    from . import __file__ as pkg, __version__

    out = {"persistjob": __version__, "python": platform.python_version(), "python_path": sys.executable,
           "persistjob_path": os.path.dirname(pkg), "bundle": os.environ.get("PERSISTJOB_BUNDLE", "")}
    boto3 = sys.modules.get("boto3")
    if boto3 is not None:
        out["boto3_path"] = os.path.dirname(str(boto3.__file__))
    return out


# Size: the orchestration of one run, step by step; process supervision, signals, modes and the
# repository rules live in worker/ and repo/.
class Wrapper:
    """One run of a persistent job on a worker node."""

    def __init__(self, opts: RunOptions, environ: Optional[Mapping[str, str]] = None, *,
                 backend: Optional[Backend] = None, telemetry: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        self.opts = opts
        self.environ = dict(os.environ if environ is None else environ)
        self._backend = backend
        if telemetry is None:
            from .telemetry import for_environment

            telemetry = for_environment(self.environ)
        self.telemetry = telemetry
        self.signals = StopSignals()
        self.info: Optional[RunInfo] = None
        self.payload: Optional[Payload] = None
        self.ws: Any = None

    @property
    def stop_reason(self) -> Optional[str]:
        return self.signals.reason

    def _cancelled(self) -> bool:
        return self.signals.reason is not None

    # ------------------------------------------------------------ main
    def run(self) -> int:
        code: Optional[int] = None
        try:
            code = self._run()
            return code
        except PersistJobError as exc:
            # The one-line reason reaches the job ad, so a hold (78) names it.
            self.telemetry({C.ATTR_LAST_ERROR: exc.message})
            raise
        finally:
            if self.payload is not None:
                self.payload.kill_everything()
            if getattr(self, "mode", None) is not None:
                # after a failure or a hold the files stay for the operator (the payload's output among
                # them), until the job's next run on this node
                self.mode.release(tidy=code in (X.EXIT_DONE, X.EXIT_CHECKPOINTED, X.EXIT_TEMPFAIL))
            if self.ws is not None:
                self.ws.close()
            self.signals.restore()
            if getattr(self, "_run_log", None) is not None:
                log.removeHandler(self._run_log)

    def _run(self) -> int:
        o = self.opts
        # 1. identity, and everything that can be checked before touching the store
        self.job_id = resolve_job_id(o.job_id, self.environ)
        exe = resolve_payload(o.payload[0])
        check_codec(o.codec)
        inner = self._backend if self._backend is not None else get_backend(o.store)
        ckdir = prepare_checkpoint_dir(checkpoint_dir(o, self.job_id))  # created only once the inputs are known good
        self.store = RetryingBackend(inner, o.storage_timeout, cancel=self._cancelled)
        self.repo = JobRepo(self.store, self.job_id, keep=o.keep)
        self.ws = self.repo.workspace(ckdir, chunk_size=o.chunk_size, workers=o.workers, cancel=self._cancelled,
                                      codec=o.codec)
        self.payload = Payload(exe, o.payload[1:], ckdir, self.signals.wait)
        self.mode = make_mode(self.payload, o, ckdir, self.environ)
        self.ws.page_files = self.mode.page_files
        set_child_subreaper()
        self.signals.install()
        # 2. claim (on a store that can fence: checked first)
        try:
            mine = self.repo.claim()
        except StorageUnavailable as exc:
            raise TryLater("storage unreachable after %.0fs of retries (%s); not starting fresh" % (o.storage_timeout, exc)) from None
        except Fenced:
            log.info("fenced: another instance claimed job %s at the same moment; exiting without writing", self.job_id)
            self._note_fenced("another instance claimed the job at the same moment")
            return X.EXIT_TEMPFAIL
        self.info = RunInfo(self.job_id, mine.run, mine.seq, host_name(), host_and_slot(self.environ), os.getpid(),
                            time.time(), generation=mine.generation)
        self._run_log = _RunLog(self.info.log)
        log.addHandler(self._run_log)
        log.info("claim: job %s run %d (log record %d, key %s) on %s", self.job_id, mine.run, mine.seq,
                 self.repo.key[:12], host_name())
        try:
            self.mode.after_claim()
        except TryLater as exc:
            return self._end(exc.exit_code, exc.message)
        # 3. restore
        generation = self._restore()
        self._put_run("running")
        self.telemetry({C.ATTR_RUNS: mine.run, C.ATTR_GENERATION: mine.generation, C.ATTR_STORE: o.store})
        if self.stop_reason:
            return self._finish(self.stop_reason, o.vacate_grace * 0.8)
        # 4.-6. run, checkpoint, end
        return self._supervise(generation)

    def _restore(self) -> int:
        assert self.info is not None
        try:
            restored = self.repo.restore(self.ws, accept=self.mode.accept_restore)
        except StorageUnavailable as exc:
            raise TryLater("storage unreachable during restore (%s); not starting fresh" % exc) from None
        except NoIntactGeneration as exc:
            self.info.fallbacks = list(getattr(exc, "fallbacks", []))
            if self.opts.criu_cold_start:
                log.warning("restore: no retained generation restored (%s); --criu-cold-start: the payload starts "
                            "anew in an empty directory", exc.message)
                self.mode.cold_start()
                self.info.reason = "cold start: no generation restored"
                return 0
            self.info.reason = "no intact generation"
            self._put_run("failed")
            raise
        except ConfigError as exc:  # this node cannot use the generation (criu: its CPU): held, nothing falls back
            self._end(exc.exit_code, exc.message)
            raise
        self.info.fallbacks = restored.fallbacks
        self.info.restored_generation = restored.generation
        if restored.generation == 0:
            log.info("restore: no checkpoint yet, starting fresh")
            return 0
        st = restored.stats
        self.info.bytes_downloaded += st.transferred
        log.info("restore: generation %d (%d files, %s, %s downloaded, %.2fs)", restored.generation, st.files,
                 format_bytes(st.bytes), format_bytes(st.transferred), st.seconds)
        return restored.generation

    def _start_payload(self, generation: int) -> None:
        assert self.payload is not None and self.info is not None
        env = dict(self.environ)
        env.update({C.ENV_JOB_ID: self.job_id, C.ENV_CHECKPOINT_DIR: self.payload.cwd, C.ENV_RUN: str(self.info.run),
                    C.ENV_GENERATION: str(generation)})
        env.update(self.mode.payload_env())
        self.mode.start(env)
        self.info.payload_starts = self.payload.starts

    def _supervise(self, generation: int) -> int:
        o, payload = self.opts, self.payload
        assert payload is not None
        started = time.monotonic()
        life_end = started + o.lifetime
        next_ckpt = started + o.interval if self.mode.periodic else float("inf")
        next_lease = started + o.lease_check
        self._start_payload(generation)
        while True:
            now = time.monotonic()
            if payload.poll() is None and self.stop_reason is None:
                self.signals.wait(min(life_end, next_lease, next_ckpt) - now)
            if self.stop_reason is not None:
                return self._finish(self.stop_reason, o.vacate_grace * 0.8)
            rc = payload.poll()
            if rc is not None:
                if rc == X.EXIT_CHECKPOINTED:  # the payload saved its state and asks to be run again
                    code = self._commit_or_fence(Quiet(False))
                    if code is not None:
                        return code
                    if time.monotonic() < life_end and self.stop_reason is None:
                        self._start_payload(self.repo.mine.generation)
                        continue
                    return self._end(X.EXIT_CHECKPOINTED, "lifetime over" if self.stop_reason is None else self.stop_reason)
                if rc == X.EXIT_DONE:
                    code = self._commit_or_fence(Quiet(False), final=True)
                    return code if code is not None else self._end(X.EXIT_DONE, "payload finished")
                return self._crashed(rc)
            now = time.monotonic()
            if now >= life_end:
                return self._finish("lifetime over", o.storage_timeout + o.vacate_grace)
            if now >= next_ckpt:
                quiet = self.mode.quiesce()
                code = self._commit_or_fence(quiet) if quiet is not None else None
                if code is not None:
                    return code
                next_ckpt = time.monotonic() + o.interval
            if now >= next_lease:
                next_lease = now + o.lease_check
                try:
                    if self.repo.superseded():
                        return self._fenced("the job's log has a newer record (another instance's claim, or persistjob rm)")
                except StorageError as exc:
                    log.debug("lease check failed: %s", exc)

    # ------------------------------------------------------------ checkpoints
    def _commit(self, quiet: Quiet) -> None:
        """Snapshot (payload quiet), let it go on, upload, publish the generation."""
        assert self.info is not None
        self.repo.before_snapshot(self.ws.cancel)
        t0 = time.monotonic()
        if quiet.pause:
            quiet.pause()
        try:
            snap = self.ws.snapshot(os.path.dirname(self.ws.root) if quiet.staged else None)
        finally:
            paused = time.monotonic() - t0
            if quiet.resume:
                quiet.resume()
        rec = self.repo.commit(self.ws, snap, started=t0)
        st = snap.stats
        self.info.commits += 1
        self.info.generation = rec.generation
        self.info.bytes_uploaded += st.transferred
        log.info("commit: generation %d (%d files, %s, %s uploaded in %d new chunks, %.2fs, payload paused %.2fs)",
                 rec.generation, st.files, format_bytes(st.bytes), format_bytes(st.transferred), st.chunks_new,
                 time.monotonic() - t0, paused if (quiet.pause or quiet.staged) else 0.0)
        self.telemetry({C.ATTR_GENERATION: rec.generation, C.ATTR_LAST_COMMIT: int(time.time()), C.ATTR_BYTES: st.bytes})
        if self.info.commits % (4 * self.opts.keep) == 0:
            self._gc()

    def _commit_or_fence(self, quiet: Quiet, final: bool = False) -> Optional[int]:
        """Commit; on fencing stop and return 75; on storage failure log and go on (None)."""
        try:
            self._commit(quiet)
        except Fenced:
            return self._fenced("the commit lost the race for the next log record")
        except StorageUnavailable as exc:
            log.warning("commit failed after retries (%s); the payload goes on, last good generation is %d", exc,
                        self.repo.mine.generation)
            self.telemetry({C.ATTR_LAST_ERROR: "commit failed: %s" % exc})
            if final:
                return self._end(X.EXIT_TEMPFAIL, "final commit failed: %s" % exc)
        except IntegrityError as exc:  # cancelled by SIGTERM mid-upload
            log.warning("commit abandoned: %s", exc)
        return None

    def _finish(self, reason: str, budget: float) -> int:
        """Final checkpoint within ``budget`` seconds, stop the payload, exit 85."""
        assert self.payload is not None
        deadline = time.monotonic() + budget
        self.store.deadline = deadline
        self.store.cancel = lambda: False  # the final checkpoint must not be cancelled by the signal itself
        self.ws.cancel = lambda: False
        log.info("stop: %s; taking a final checkpoint (budget %.0fs)", reason, budget)
        if self.payload.started:  # evicted before the payload started: nothing new to save
            quiet = self.mode.quiesce_final(deadline - time.monotonic())
            code = self._commit_or_fence(quiet) if quiet is not None else None
            if code is not None:
                return code
        self.payload.stop(max(0.5, min(10.0, deadline - time.monotonic())))
        self.mode.cleanup()
        return self._end(X.EXIT_CHECKPOINTED, reason)

    # ------------------------------------------------------------ endings
    def _crashed(self, rc: int) -> int:
        assert self.info is not None
        what = ("killed by signal %s" % signal.Signals(-rc).name) if rc < 0 else ("exited %d" % rc)
        if rc == -signal.SIGKILL:
            # SIGKILL comes from outside the payload (a killed starter's process tracking, the kernel's
            # OOM killer, an operator): a lost run, not a payload failure that feeds the crash streak
            return self._end(X.EXIT_PAYLOAD_FAILED, "payload %s from outside; counted as a lost run, not a crash"
                             % what, lost=True)
        streak = self.repo.failed_streak(self.info.commits > 0)
        if streak >= self.opts.crash_limit:
            return self._end(X.EXIT_CRASHLOOP, "crash loop: payload %s; %d consecutive runs failed without a new "
                             "commit" % (what, streak), crash_streak=streak)
        return self._end(X.EXIT_PAYLOAD_FAILED, "payload %s (failed run %d of %d allowed before hold)" %
                         (what, streak, self.opts.crash_limit), crash_streak=streak)

    def _fenced(self, why: str) -> int:
        assert self.payload is not None
        self.payload.kill_everything()
        log.info("fenced: %s; job %s is owned by another instance; stopping without writing", why, self.job_id)
        self.telemetry({C.ATTR_LAST_ERROR: "fenced: %s" % why})
        self._note_fenced(why)
        return X.EXIT_TEMPFAIL

    def _note_fenced(self, why: str) -> None:
        """A note beside the log (never in it) lets `persistjob status` count and flag refusals."""
        assert self.store is not None and self.repo is not None
        try:
            self.store.deadline = time.monotonic() + 10
            self.repo.note_fenced(why)
        except StorageError:
            pass

    def _end(self, code: int, reason: str, crash_streak: Optional[int] = None, lost: bool = False) -> int:
        assert self.info is not None and self.payload is not None
        self.payload.stop(min(10.0, self.opts.vacate_grace))
        try:
            self.repo.end_run(code, reason, crash_streak, lost)
        except Fenced:
            return self._fenced("another instance appended to the log")
        except StorageError as exc:
            log.warning("could not record the end of the run: %s", exc)
        self.info.reason = reason
        self.info.exit_code = code
        if self.info.commits:
            self._gc()
        self._put_run("ended")
        if code in (X.EXIT_CONFIG, X.EXIT_CRASHLOOP, X.EXIT_PAYLOAD_FAILED):
            self.telemetry({C.ATTR_LAST_ERROR: reason})
        log.info("exit %d (%s): %s", code, X.meaning(code), reason)
        return code

    def _gc(self) -> None:
        try:
            stats = self.repo.gc_as_owner(self.opts.gc_grace)
        except StorageError as exc:
            log.warning("gc: skipped (%s)", exc)
            return
        if stats["manifests"] or stats["chunks"]:
            log.info("gc: deleted %d manifests and %d chunks (%s)", stats["manifests"], stats["chunks"],
                     format_bytes(stats["bytes"]))

    def _put_run(self, state: str) -> None:
        assert self.info is not None
        if state != "running":
            self.info.end = time.time()
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.info.cpu_user, self.info.cpu_system = round(ru.ru_utime, 3), round(ru.ru_stime, 3)
        body = dict(self.info.__dict__, state=state)
        try:
            self.repo.put_run(self.info.run, self.info.claim_seq, body)
        except StorageError as exc:
            log.warning("could not write the run record: %s", exc)


def run(opts: RunOptions, environ: Optional[Mapping[str, str]] = None) -> int:
    """Run one lifetime of a persistent job; return the exit code."""
    return Wrapper(opts, environ).run()


__all__ = ["RunOptions", "Wrapper", "run", "resolve_payload"]
