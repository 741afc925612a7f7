"""``persistjob wq workers``: Work Queue foremen and workers, as alien_wq_worker.sh did.

Variables (with the original's defaults): ``WQ_MASTER`` (127.0.0.1:9094),
``WQ_FOREMEN`` (127.0.0.1), ``WQ_NUM_FOREMEN`` (2), ``WQ_NUM_WORKERS``
(cores), ``WQ_MASTER_BASEPORT`` (9080), ``WQ_WORKDIR`` (~/.alien_wq_tmp),
``WQ_DRAIN`` (~/.alien_wq_drain), ``WQ_SINGLETASK`` (0), ``WQ_IDLETIMEOUT``
(100), ``WQ_NORESPAWN`` (0), ``WQ_DEBUG``.

Each foreman or worker runs under a small supervisor process that records
PID files (no ``ps | grep``), respawns it with backoff unless
``WQ_NORESPAWN=1`` or the drain file exists, and stops it on SIGTERM.
Single-task mode is emulated on stock CCTools (which has no
``--single-task``): the worker offers one core, and the supervisor stops it
once the manager has acknowledged (``kill <task>``) every task it received.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

from ..errors import ConfigError


@dataclass(frozen=True)
class WorkerEnv:
    master: Tuple[str, int]
    foremen_host: str
    num_foremen: int
    num_workers: int
    baseport: int
    workdir: str
    drain: str
    singletask: bool
    idletimeout: int
    norespawn: bool
    debug: bool

    @classmethod
    def from_environ(cls, env: Optional[Dict[str, str]] = None) -> "WorkerEnv":
        e = dict(os.environ if env is None else env)
        home = e.get("HOME") or os.path.expanduser("~")
        master = e.get("WQ_MASTER", "127.0.0.1:9094")
        host, sep, port = master.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError("WQ_MASTER must be host:port (port is mandatory), got %r" % master)

        def num(name: str, default: int) -> int:
            v = e.get(name, "")
            if v == "":
                return default
            if not v.isdigit():
                raise ConfigError("%s must be a number, got %r" % (name, v))
            return int(v)

        return cls(master=(host, int(port)), foremen_host=e.get("WQ_FOREMEN", "127.0.0.1"),
                   num_foremen=num("WQ_NUM_FOREMEN", 2), num_workers=num("WQ_NUM_WORKERS", os.cpu_count() or 1),
                   baseport=num("WQ_MASTER_BASEPORT", 9080), workdir=e.get("WQ_WORKDIR") or os.path.join(home, ".alien_wq_tmp"),
                   drain=e.get("WQ_DRAIN") or os.path.join(home, ".alien_wq_drain"),
                   singletask=e.get("WQ_SINGLETASK", "0") == "1", idletimeout=num("WQ_IDLETIMEOUT", 100),
                   norespawn=e.get("WQ_NORESPAWN", "0") == "1", debug=bool(e.get("WQ_DEBUG")))


def _binary() -> str:
    b = shutil.which("work_queue_worker")
    if not b:
        raise ConfigError("work_queue_worker not found on PATH (Debian: apt-get install coop-computing-tools)")
    return b


def worker_command(w: WorkerEnv, role: str, index: int, debug_file: Optional[str]) -> List[str]:
    """The work_queue_worker command line of foreman/worker ``index`` (pure)."""
    cmd = [_binary_or_name()]
    if role == "foreman":
        cmd += ["--foreman", "--foreman-port", str(w.baseport + index), "--timeout", "86400",
                "--workdir", os.path.join(w.workdir, "foreman-%d" % index), w.master[0], str(w.master[1])]
    else:
        port = w.baseport + (index % max(1, w.num_foremen))
        cmd += ["--timeout", str(w.idletimeout), "--workdir", os.path.join(w.workdir, "worker-%d" % index)]
        if w.singletask:
            cmd += ["--cores", "1"]
        cmd += [w.foremen_host, str(port)]
    if debug_file:
        cmd[1:1] = ["-d", "wq", "-o", debug_file]
    return cmd


def _binary_or_name() -> str:
    return shutil.which("work_queue_worker") or "work_queue_worker"


def _plural(role: str) -> str:
    return "foremen" if role == "foreman" else role + "s"


def _pidfile(w: WorkerEnv, role: str, index: int) -> str:
    return os.path.join(w.workdir, "%s-%d.pid" % (role, index))


def _supervisor_pidfile(w: WorkerEnv, role: str, first: int) -> str:
    return os.path.join(w.workdir, "%s-supervisor-%d.pid" % (role, first))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _read_pids(w: WorkerEnv, prefix: str) -> List[Tuple[int, int, str]]:
    """(index, pid, path) of PID files ``prefix<index>.pid`` whose process is alive; stale files are removed."""
    out: List[Tuple[int, int, str]] = []
    if not os.path.isdir(w.workdir):
        return out
    for name in sorted(os.listdir(w.workdir)):
        if not (name.startswith(prefix) and name.endswith(".pid")):
            continue
        idx = name[len(prefix):-4]
        if not idx.isdigit():
            continue
        path = os.path.join(w.workdir, name)
        try:
            with open(path) as f:
                pid = int(f.read().split()[0])
        except (ValueError, OSError, IndexError):
            continue
        if _alive(pid):
            out.append((int(idx), pid, path))
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    return out


def running(w: WorkerEnv, role: str) -> List[Tuple[int, int]]:
    """(index, pid) of the live foremen or workers, from their PID files."""
    return [(i, pid) for i, pid, _ in _read_pids(w, role + "-")]


def start(w: WorkerEnv, role: str, count: int) -> int:
    """Start the missing ones of ``count`` foremen or workers under one supervisor process."""
    _binary()
    os.makedirs(w.workdir, exist_ok=True)
    have = {i for i, _ in running(w, role)}
    supervised: Set[int] = set()
    for first, _pid, path in _read_pids(w, role + "-supervisor-"):
        try:
            with open(path) as f:
                supervised.update(int(x) for x in f.read().split()[1:])
        except (OSError, ValueError):
            pass
    todo = [i for i in range(count) if i not in have and i not in supervised]
    if todo:
        log = open(os.path.join(w.workdir, "%s-supervisor-%d.log" % (role, todo[0])), "ab")
        subprocess.Popen([sys.executable, "-m", "persistjob", "wq", "workers", "supervise", "--role", role,
                          "--index", ",".join(map(str, todo))], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, env=dict(os.environ, WQ_WORKDIR=w.workdir))
        log.close()
        end = time.monotonic() + 30
        while time.monotonic() < end and not os.path.exists(_supervisor_pidfile(w, role, todo[0])):
            time.sleep(0.05)
    print("%s: %d started, %d already running (%s)" % (_plural(role), len(todo), count - len(todo), w.workdir))
    return 0


def stop(w: WorkerEnv, role: str, timeout: float = 30.0) -> int:
    n = len(running(w, role))
    sups = _read_pids(w, role + "-supervisor-")
    for _, pid, _ in sups:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(_alive(pid) for _, pid, _ in sups):
        time.sleep(0.2)
    for _, pid, path in sups:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        try:
            os.unlink(path)
        except OSError:
            pass
    for i, pid in running(w, role):  # children of a supervisor that was killed
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    print("%s: %d stopped" % (_plural(role), n))
    return 0


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: Optional[subprocess.Popen] = None
        self.started = 0.0
        self.backoff = 1.0
        self.next_start = 0.0
        self.done = False
        self.debug: Optional[str] = None
        self.pos = 0
        self.received: set = set()
        self.acked: set = set()


class Supervisor:
    """Runs a set of foremen or workers; respawns each with backoff; single-task emulation."""

    def __init__(self, w: WorkerEnv, role: str, indices: List[int]) -> None:
        self.w = w
        self.role = role
        self.children = [_Child(i) for i in indices]
        self.stopping = False

    def _term(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._term)
        signal.signal(signal.SIGINT, self._term)
        mine = _supervisor_pidfile(self.w, self.role, self.children[0].index)
        with open(mine, "w") as f:
            f.write("%d %s\n" % (os.getpid(), " ".join(str(c.index) for c in self.children)))
        try:
            while not self.stopping and not all(c.done for c in self.children):
                now = time.monotonic()
                for c in self.children:
                    self._tend(c, now)
                time.sleep(0.05 if self.w.singletask else 0.5)
        finally:
            for c in self.children:
                if c.proc is not None and c.proc.poll() is None:
                    c.proc.terminate()
            for c in self.children:
                if c.proc is not None:
                    try:
                        c.proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        c.proc.kill()
                        c.proc.wait()
                self._forget(c)
            try:
                os.unlink(mine)
            except OSError:
                pass
        return 0

    def _forget(self, c: _Child) -> None:
        try:
            os.unlink(_pidfile(self.w, self.role, c.index))
        except OSError:
            pass

    def _tend(self, c: _Child, now: float) -> None:
        if c.done:
            return
        if c.proc is not None:
            rc = c.proc.poll()
            if rc is None:
                if self.w.singletask and self.role == "worker":
                    self._single_task(c)
                return
            print("%s %d exited %d after %.0fs" % (self.role, c.index, rc, now - c.started), flush=True)
            c.proc = None
            self._forget(c)
            if self.w.norespawn:
                c.done = True
                return
            c.backoff = 1.0 if now - c.started > 60 else min(c.backoff * 2, 60.0)
            c.next_start = now + c.backoff
            return
        if now < c.next_start:
            return
        if os.path.exists(self.w.drain):
            print("drain file %s exists: not starting %s %d" % (self.w.drain, self.role, c.index), flush=True)
            c.done = True
            return
        c.debug = None
        if self.w.singletask or self.w.debug:
            c.debug = os.path.join(self.w.workdir, "%s-%d.debug" % (self.role, c.index))
            if os.path.exists(c.debug):
                os.unlink(c.debug)
        c.pos, c.received, c.acked = 0, set(), set()
        cmd = worker_command(self.w, self.role, c.index, c.debug)
        os.makedirs(os.path.join(self.w.workdir, "%s-%d" % (self.role, c.index)), exist_ok=True)
        c.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        c.started = now
        with open(_pidfile(self.w, self.role, c.index), "w") as f:
            f.write("%d\n" % c.proc.pid)
        print("started %s (pid %d)" % (" ".join(cmd), c.proc.pid), flush=True)

    def _single_task(self, c: _Child) -> None:
        """Stop the worker once the manager has acknowledged its first result."""
        assert c.proc is not None and c.debug is not None
        try:
            with open(c.debug, errors="replace") as f:
                f.seek(c.pos)
                chunk = f.read()
                c.pos = f.tell()
        except FileNotFoundError:
            return
        for line in chunk.splitlines():
            if "rx from manager: task " in line:
                c.received.add(line.rsplit(" ", 1)[1])
            elif "rx from manager: kill " in line:
                c.acked.add(line.rsplit(" ", 1)[1])
        if c.acked:
            # The manager acknowledged the first result; it may have sent the next task in the same breath:
            # stopping the worker now returns that one to the manager's queue (Work Queue requeues the tasks
            # of a worker that leaves), so this worker completes exactly one task.
            extra = c.received - c.acked
            print("single task: %s done and acknowledged; stopping %s %d%s" % (
                ",".join(sorted(c.acked)), self.role, c.index,
                " (returning %s)" % ",".join(sorted(extra)) if extra else ""), flush=True)
            c.proc.terminate()
            c.acked = set()


def count(w: WorkerEnv) -> int:
    for role in ("foreman", "worker"):
        n = len(running(w, role))
        print("%s: %d running" % (_plural(role), n))
    return 0


def via_condor(w: WorkerEnv, n: int) -> int:
    """Workers kept alive as persistent HTCondor jobs: a pilot factory without cron."""
    from ..schedd import Scheduler

    desc = {
        "universe": "vanilla",
        "executable": _binary(),
        "transfer_executable": "false",
        "arguments": '"--timeout %d --cores 1 %s %d"' % (w.idletimeout, w.master[0], w.master[1]),
        "output": os.path.join(w.workdir, "condor-worker.$(Cluster).$(Process).out"),
        "error": os.path.join(w.workdir, "condor-worker.$(Cluster).$(Process).err"),
        "log": os.path.join(w.workdir, "condor-worker.$(Cluster).log"),
        "request_cpus": "1",
        "on_exit_remove": "false",
        "kill_sig": "SIGTERM",
        "+PersistName": '"wq-worker"',
    }
    os.makedirs(w.workdir, exist_ok=True)
    cluster = Scheduler().submit(desc, n)
    print("%d Work Queue worker(s) submitted as persistent HTCondor jobs to cluster %d (manager %s:%d)"
          % (n, cluster, w.master[0], w.master[1]))
    return 0


def main(action: str, a: Any) -> int:
    w = WorkerEnv.from_environ()
    if action == "supervise":
        return Supervisor(w, a.role, [int(x) for x in str(a.index).split(",")]).run()
    if a.via == "condor":
        if action != "start-workers":
            raise ConfigError("--via condor goes with start-workers (remove them with condor_rm)")
        return via_condor(w, a.count or w.num_workers)
    if action == "start-foremen":
        return start(w, "foreman", a.count or w.num_foremen)
    if action == "start-workers":
        return start(w, "worker", a.count or w.num_workers)
    if action == "stop-foremen":
        return stop(w, "foreman")
    if action == "stop-workers":
        return stop(w, "worker")
    if action == "stop":
        stop(w, "worker")
        return stop(w, "foreman")
    if action == "count":
        return count(w)
    if action == "drain":
        os.makedirs(os.path.dirname(w.drain) or ".", exist_ok=True)
        open(w.drain, "a").close()
        print("drain file %s created: workers and foremen are not respawned and exit when idle" % w.drain)
        return 0
    raise ConfigError("unknown action %s" % action)
