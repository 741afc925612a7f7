"""``persistjob wq manager``: a Work Queue manager for pilots and persistent tasks.

Two kinds of work, both from the durable job table (``state.py``):

* pilot jobs that the ``condor_submit`` shim spooled: run once, stdout and
  stderr returned to the paths they named, exit status recorded, an
  HTCondor-style user log written;
* persistent tasks (``persistjob wq submit``): ``persistjob run`` with
  ``PERSISTJOB_JOB_ID`` set, resubmitted by the exit-code contract
  (``contract.py``): "rerun" at once, "rerun-later" after a delay that doubles
  with each consecutive one, "complete" done, "hold" held, "hold-release"
  held and released after a doubling delay up to --release-limit holds.

After a restart every job is known again and running ones are resubmitted;
the store's fencing keeps a task still running on a worker from committing
over its successor.  A ``drain`` file in the work directory stops intake;
the manager exits when nothing runs any more.  The manager reports to a
catalog only when ``--catalog-host`` is given.
"""

import json
import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ... import constants as C
from ... import contract as X
from ...errors import ConfigError, reason_from_stderr
from . import userlog
from .table import COMPLETED, HELD, IDLE, REMOVED, RUNNING, JobTable

log = logging.getLogger("persistjob.wq")


def import_work_queue() -> Any:
    """ndcctools' Work Queue: ``from ndcctools import work_queue``, else the older ``work_queue``."""
    try:
        from ndcctools import work_queue  # type: ignore[import-not-found]

        return work_queue
    except ImportError:
        pass
    try:
        import work_queue  # type: ignore[import-not-found]

        return work_queue
    except ImportError:
        pass
    for d in ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3/dist-packages"):
        if os.path.exists(os.path.join(d, "work_queue.py")):
            sys.path.append(d)
            try:
                import work_queue  # type: ignore[import-not-found,no-redef]

                return work_queue
            except ImportError:
                sys.path.remove(d)
    raise ConfigError("Work Queue Python bindings not found: install Debian's python3-workqueue (or CCTools from "
                      "conda) ; ndcctools is not on PyPI")


@dataclass(frozen=True)
class ManagerOptions:
    port: int = 9094
    name: Optional[str] = None
    work_dir: str = "/tmp/awq"
    job_wrapper: Optional[str] = None
    catalog_host: Optional[str] = None
    catalog_port: int = 9097
    project_name: str = "alien_jobs"
    max_jobs: int = 10000
    max_retries: int = 3
    persistjob_cmd: str = ""
    bundle: Optional[str] = None
    pass_env: Tuple[str, ...] = ("AWS_*",)
    retry_delay: float = X.DEFAULT_RETRY_BASE
    release_base: float = X.DEFAULT_RELEASE_BASE
    release_limit: int = X.DEFAULT_RELEASE_LIMIT

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError("--max-retries must be 0 (no retry) or more")
        if self.max_jobs < 1:
            raise ConfigError("--max-jobs must be at least 1")
        if self.job_wrapper and not os.access(self.job_wrapper, os.X_OK):
            raise ConfigError("--job-wrapper %s is not an executable file" % self.job_wrapper)


def _bundle() -> str:
    from ...bundle import cached

    return cached()


def _env_matches(name: str, patterns: Tuple[str, ...]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


# Size: one event loop (intake, promotion, completion, releases, drain, removal) over one Work Queue and
# one job table; every step is a method of a few lines.
class Manager:
    def __init__(self, opts: ManagerOptions, wq: Any = None) -> None:
        self.o = opts
        self.wq = wq or import_work_queue()
        self.table = JobTable(opts.work_dir)
        self.tasks: Dict[int, Tuple[int, int]] = {}  # WQ task id -> (cluster, proc)
        self.rows: Dict[int, Any] = {}  # WQ task id -> the job's row when it was handed over
        self.queued: Dict[int, Tuple[int, int]] = {}  # submitted to WQ, no worker yet
        self.stop = False
        # persistjob on the workers: the bundle, sent as a cached input file of each task (the workers
        # need only python3), unless --persistjob-cmd names an installed one
        self.bundle = None if opts.persistjob_cmd else (opts.bundle or _bundle())
        self.persistjob_cmd = shlex.split(opts.persistjob_cmd) if opts.persistjob_cmd else ["python3", "persistjob.pyz"]
        self.out_dir = os.path.join(self.table.work_dir, "tasks")
        os.makedirs(self.out_dir, exist_ok=True)
        self.q: Any = None
        self.started = time.time()
        self.stats = {"dispatched": 0, "completed": 0}

    # -- lifecycle
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop = True

    def open_queue(self) -> None:
        try:
            self.q = self.wq.WorkQueue(port=self.o.port)
        except Exception as exc:
            raise ConfigError("cannot listen on port %d: %s" % (self.o.port, exc)) from None
        try:
            self.q.specify_task_order(self.wq.WORK_QUEUE_TASK_ORDER_FIFO)  # first submitted, first run
        except AttributeError:  # pragma: no cover - very old CCTools
            pass
        if self.o.catalog_host:
            self.q.specify_catalog_server(self.o.catalog_host, self.o.catalog_port)
            self.q.specify_name(self.o.name or self.o.project_name)
        elif self.o.name:
            log.warning("wq: --name without --catalog-host: not reporting to any catalog (CCTools' public "
                        "default is never used)")
        self.port = self.q.port
        # the address the shims name when this manager is down (kept after it exits)
        with open(os.path.join(self.table.work_dir, ".manager.address.tmp"), "w") as f:
            f.write("127.0.0.1:%d\n" % self.port)
        os.replace(os.path.join(self.table.work_dir, ".manager.address.tmp"),
                   os.path.join(self.table.work_dir, "manager.address"))
        log.info("wq: manager listening on port %d, work dir %s%s", self.port, self.table.work_dir,
                 (", reporting to catalog %s:%d as %s" % (self.o.catalog_host, self.o.catalog_port,
                                                          self.o.name or self.o.project_name)) if self.o.catalog_host else "")

    def recover(self) -> None:
        """Jobs a previous manager had running are resubmitted; its tasks died with it (or are fenced)."""
        n = 0
        for r in self.table.with_task():
            if r["status"] in (RUNNING, IDLE):
                self.table.update(r["cluster"], r["proc"], status=IDLE, task_id=None)
                n += 1
            else:
                self.table.update(r["cluster"], r["proc"], task_id=None)
        counts = self.table.counts()
        log.info("wq: job table: %d idle, %d running, %d held, %d completed, %d removed (%d resubmitted after restart)",
                 counts[IDLE], counts[RUNNING], counts[HELD], counts[COMPLETED], counts[REMOVED], n)

    def heartbeat(self) -> None:
        info = {"pid": os.getpid(), "port": self.port, "heartbeat": time.time(), "started": self.started,
                "workers": self._workers(), "tasks": len(self.tasks), **self.stats}
        tmp = os.path.join(self.table.work_dir, ".manager.json.tmp")
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, os.path.join(self.table.work_dir, "manager.json"))

    def _workers(self) -> int:
        try:
            return int(self.q.stats.workers_connected)
        except Exception:
            return 0

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.open_queue()
        self.recover()
        last_beat = last_promote = 0.0
        drained = False
        try:
            while not self.stop:
                now = time.time()
                draining = os.path.exists(os.path.join(self.table.work_dir, "drain"))
                if draining and not drained:
                    log.info("wq: drain file found: no new work; exiting when the queue is empty")
                    drained = True
                if draining:
                    self.unqueue()
                self.cancel_removed()
                self.release_held(now)
                if not draining:
                    self.intake(now)
                elif not self.tasks:
                    log.info("wq: drained, nothing running: exiting")
                    break
                if self.queued and now - last_promote >= 0.5:
                    self.promote()
                    last_promote = now
                if now - last_beat >= 1.0:
                    self.heartbeat()
                    last_beat = now
                if not self.tasks:
                    # WorkQueue.wait() returns at once when it holds no task; it still does its housekeeping
                    # (accepting workers, catalog updates), then poll the table instead of spinning
                    self.q.wait(0)
                    time.sleep(0.05)
                    continue
                t = self.q.wait(1)
                if t is not None:
                    with self.table.transaction():
                        while t is not None:
                            self.complete(t)
                            t = self.q.wait(0)
        finally:
            try:
                os.unlink(os.path.join(self.table.work_dir, "manager.json"))
            except OSError:
                pass
            self.table.close()
        return 0

    # -- work in
    def intake(self, now: float) -> None:
        room = self.o.max_jobs - len(self.tasks)
        if room <= 0:
            return
        rows = self.table.ready(now, room)
        if not rows:
            return
        with self.table.transaction():
            for r in rows:
                task = self.make_task(r)
                tid = self.q.submit(task)
                self.tasks[tid] = (r["cluster"], r["proc"])
                self.rows[tid] = r
                self.queued[tid] = (r["cluster"], r["proc"])
                self.table.set_task(r["cluster"], r["proc"], tid)  # still idle (as HTCondor says) until a worker runs it
                self.stats["dispatched"] += 1

    def promote(self) -> None:
        """Queued tasks that a worker has started become running jobs."""
        ready = self.wq.WORK_QUEUE_TASK_READY
        started = [(tid, key) for tid, key in self.queued.items() if self.q.task_state(tid) != ready]
        if not started:
            return
        with self.table.transaction():
            for tid, key in started:
                self._mark_running(tid, key)

    def _mark_running(self, tid: int, key: Tuple[int, int], row: Any = None) -> None:
        self.queued.pop(tid, None)
        self.table.mark_running(key[0], key[1], time.time())
        row = row if row is not None else self.rows.get(tid)
        if row is not None and row["log"]:
            userlog.event(row["log"], 1, key[0], key[1], "Job executing on host: <127.0.0.1:%d>" % self.port)

    def make_task(self, r: Any) -> Any:
        wq = self.wq
        tag = "%d.%d" % (r["cluster"], r["proc"])
        base = os.path.join(self.out_dir, tag)
        env = json.loads(r["env"])
        args = json.loads(r["args"])
        if r["kind"] == "persistent":
            cmd = self.persistjob_cmd + args
            command = " ".join(shlex.quote(x) for x in cmd)
            env = dict(env)
            env[C.ENV_JOB_ID] = r["job_id"]
            for k, v in os.environ.items():
                if _env_matches(k, self.o.pass_env):
                    env.setdefault(k, v)
            t = wq.Task(command + " > task.out 2> task.err")
            if self.bundle:
                t.specify_input_file(self.bundle, "persistjob.pyz", cache=True)
            t.specify_output_file(base + ".out", "task.out", cache=False)
            t.specify_output_file(base + ".err", "task.err", cache=False)
        else:
            words = ["./agent"] + args
            if self.o.job_wrapper:
                words = ["./wrapper.sh"] + words
            t = wq.Task(" ".join(shlex.quote(x) for x in words) + " > pilot.out 2> pilot.err")
            t.specify_input_file(r["cmd"], "agent", cache=False)
            if self.o.job_wrapper:
                t.specify_input_file(self.o.job_wrapper, "wrapper.sh", cache=True)
            # stream_output/stream_error: Work Queue sends the file's growth while the task runs (WATCH),
            # so what a pilot printed is there even when it is removed before it ends
            attrs = json.loads(r["attrs"])
            for path, name, attr in ((r["output"] or base + ".out", "pilot.out", "StreamOut"),
                                     (r["error"] or base + ".err", "pilot.err", "StreamErr")):
                watch = wq.WORK_QUEUE_WATCH if attrs.get(attr) == "true" else None
                if watch:
                    open(path, "a").close()  # a streamed file exists from the start, empty or not, as on HTCondor
                t.specify_output_file(path, name, flags=watch, cache=False)
        for k, v in env.items():
            t.specify_environment_variable(k, v)
        t.specify_tag(tag)
        t.specify_cores(1)
        # HTCondor runs jobs in submission order (cluster, proc): earlier ones get higher priority
        t.specify_priority(-(r["cluster"] * 1e6 + r["proc"]))
        return t

    # -- work out
    def complete(self, t: Any) -> None:
        key = self.tasks.pop(t.id, None)
        if key is None:
            return
        r = self.rows.pop(t.id)
        if t.id in self.queued:
            self._mark_running(t.id, key, r)
        cluster, proc = key
        self.stats["completed"] += 1
        if t.result != self.wq.WORK_QUEUE_RESULT_SUCCESS:
            failures = r["failures"] + 1
            what = "Work Queue task failed (result %s)" % t.result
            if failures > self.o.max_retries:
                self.table.update(cluster, proc, unless_removed=True, status=HELD, task_id=None, failures=failures, holds=r["holds"] + 1,
                                  hold_reason="%s %d times" % (what, failures), hold_subcode=0)
            else:
                log.warning("wq: %d.%d: %s; retry %d of %d", cluster, proc, what, failures, self.o.max_retries)
                self.table.update(cluster, proc, unless_removed=True, status=IDLE, task_id=None, failures=failures,
                                  not_before=time.time() + min(300.0, 2.0 ** failures))
            return
        code = t.return_status
        if r["kind"] == "pilot":
            self.table.update(cluster, proc, unless_removed=True, status=COMPLETED, task_id=None, exit_code=code)
            if r["log"]:
                userlog.terminated(r["log"], cluster, proc, code)
            return
        self.persistent_exit(r, code)

    def persistent_exit(self, r: Any, code: int) -> None:
        """What the contract says to do after a persistent task exited with ``code``."""
        cluster, proc = r["cluster"], r["proc"]
        now = time.time()
        rule = X.rule(code)
        done: Dict[str, Any] = dict(unless_removed=True, task_id=None, exit_code=code)
        if rule.action == X.COMPLETE:
            self.table.update(cluster, proc, status=COMPLETED, later=0, **done)
        elif rule.action == X.RERUN:
            self.table.update(cluster, proc, status=IDLE, not_before=0, later=0, **done)
        elif rule.action == X.RERUN_LATER:
            later = r["later"] + 1
            delay = X.retry_delay(self.o.retry_delay, later)
            log.info("wq: %d.%d: exit %d (%s): run again in %.0fs", cluster, proc, code, rule.name, delay)
            self.table.update(cluster, proc, status=IDLE, not_before=now + delay, later=later, **done)
        else:  # HOLD, HOLD_RELEASE: released (HOLD_RELEASE only) by release_held after the delay
            holds = r["holds"] + 1
            self.table.update(cluster, proc, status=HELD, hold_reason="persistjob exit %d: %s" % (code, self._last_error(cluster, proc)),
                              hold_subcode=code, holds=holds, not_before=now + X.retry_delay(self.o.release_base, holds),
                              later=0, **done)

    def _last_error(self, cluster: int, proc: int) -> str:
        try:
            with open(os.path.join(self.out_dir, "%d.%d.err" % (cluster, proc)), errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        return reason_from_stderr(lines, "see the task's error file")

    def release_held(self, now: float) -> None:
        """Holds the contract releases (79) end after their delay, up to --release-limit holds."""
        for code in X.codes(X.HOLD_RELEASE):
            self.table.release_holds(code, now, self.o.release_limit)

    def unqueue(self) -> None:
        """Draining: tasks no worker has started go back to the table (idle) for the next manager."""
        if not self.queued:
            return
        for tid, key in list(self.queued.items()):
            if self.q.task_state(tid) != self.wq.WORK_QUEUE_TASK_READY:
                continue
            self.q.cancel_by_taskid(tid)
            self.queued.pop(tid, None)
            self.tasks.pop(tid, None)
            self.rows.pop(tid, None)
            self.table.set_task(key[0], key[1], None)

    def cancel_removed(self) -> None:
        for r in self.table.removal_pending():
            tid = r["task_id"]
            if tid in self.tasks:
                self.q.cancel_by_taskid(tid)
                self.tasks.pop(tid, None)
                self.queued.pop(tid, None)
                self.rows.pop(tid, None)
            self.table.update(r["cluster"], r["proc"], task_id=None)
            if r["log"]:
                userlog.event(r["log"], 9, r["cluster"], r["proc"], "Job was aborted.\n\tvia condor_rm")


def submit_persistent(work_dir: str, count: int, name: str, run_args: Tuple[str, ...], payload: Tuple[str, ...],
                      owner: str) -> int:
    """``persistjob wq submit``: N persistent tasks with deterministic job IDs ``wq#NAME#i``."""
    table = JobTable(work_dir)
    try:
        jobs = [{"kind": "persistent", "owner": owner, "cmd": "persistjob", "args": ["run", *run_args, "--", *payload],
                 "iwd": os.getcwd(), "job_id": "wq#%s#%d" % (name, i)} for i in range(count)]
        return table.submit(jobs)
    finally:
        table.close()
