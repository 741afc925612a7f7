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
from typing import Any, Dict, List, Optional, Tuple

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
        home = os.path.expanduser("~")
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


def running(w: WorkerEnv, role: str) -> List[Tuple[int, int]]:
    """(index, supervisor pid) of the live supervisors of a role, from their PID files."""
    out = []
    if not os.path.isdir(w.workdir):
        return out
    for name in sorted(os.listdir(w.workdir)):
        if name.startswith(role + "-") and name.endswith(".pid"):
            try:
                idx = int(name[len(role) + 1:-4])
                with open(os.path.join(w.workdir, name)) as f:
                    pid = int(f.read().split()[0])
            except (ValueError, OSError, IndexError):
                continue
            if _alive(pid):
                out.append((idx, pid))
            else:
                try:
                    os.unlink(os.path.join(w.workdir, name))
                except OSError:
                    pass
    return out


def start(w: WorkerEnv, role: str, count: int) -> int:
    _binary()
    os.makedirs(w.workdir, exist_ok=True)
    have = {i for i, _ in running(w, role)}
    started = 0
    for i in range(count):
        if i in have:
            continue
        log = open(os.path.join(w.workdir, "%s-%d.log" % (role, i)), "ab")
        p = subprocess.Popen([sys.executable, "-m", "persistjob", "wq", "workers", "supervise", "--role", role,
                              "--index", str(i)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, env=dict(os.environ, WQ_WORKDIR=w.workdir))
        log.close()
        with open(_pidfile(w, role, i), "w") as f:
            f.write("%d\n" % p.pid)
        started += 1
    print("%s: %d started, %d already running (%s)" % (_plural(role), started, len(have), w.workdir))
    return 0


def stop(w: WorkerEnv, role: str, timeout: float = 30.0) -> int:
    procs = running(w, role)
    for _, pid in procs:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(_alive(pid) for _, pid in procs):
        time.sleep(0.2)
    for idx, pid in procs:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.unlink(_pidfile(w, role, idx))
        except OSError:
            pass
    print("%s: %d stopped" % (_plural(role), len(procs)))
    return 0


class Supervisor:
    """Runs one foreman or worker; respawns it with backoff; single-task emulation."""

    def __init__(self, w: WorkerEnv, role: str, index: int) -> None:
        self.w = w
        self.role = role
        self.index = index
        self.stopping = False
        self.child: Optional[subprocess.Popen] = None

    def _term(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._term)
        signal.signal(signal.SIGINT, self._term)
        with open(_pidfile(self.w, self.role, self.index), "w") as f:
            f.write("%d\n" % os.getpid())
        backoff = 1.0
        while not self.stopping:
            if os.path.exists(self.w.drain):
                print("drain file %s exists: not starting" % self.w.drain, flush=True)
                break
            debug = None
            if self.w.singletask or self.w.debug:
                debug = os.path.join(self.w.workdir, "%s-%d.debug" % (self.role, self.index))
                if os.path.exists(debug):
                    os.unlink(debug)
            cmd = worker_command(self.w, self.role, self.index, debug)
            os.makedirs(os.path.join(self.w.workdir, "%s-%d" % (self.role, self.index)), exist_ok=True)
            t0 = time.monotonic()
            self.child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
            print("started %s (pid %d)" % (" ".join(cmd), self.child.pid), flush=True)
            if self.w.singletask and self.role == "worker":
                self._single_task(debug or "")
            rc = self.child.wait()
            print("%s %d exited %d after %.0fs" % (self.role, self.index, rc, time.monotonic() - t0), flush=True)
            if self.stopping or self.w.norespawn:
                break
            backoff = 1.0 if time.monotonic() - t0 > 60 else min(backoff * 2, 60.0)
            end = time.monotonic() + backoff
            while not self.stopping and time.monotonic() < end:
                time.sleep(0.2)
        try:
            os.unlink(_pidfile(self.w, self.role, self.index))
        except OSError:
            pass
        return 0

    def _single_task(self, debug: str) -> None:
        """Stop the worker once the manager has acknowledged every task it received."""
        assert self.child is not None
        received, acked = set(), set()
        pos = 0
        while self.child.poll() is None and not self.stopping:
            try:
                with open(debug, errors="replace") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except FileNotFoundError:
                chunk = ""
            for line in chunk.splitlines():
                if "rx from manager: task " in line:
                    received.add(line.rsplit(" ", 1)[1])
                elif "rx from manager: kill " in line:
                    acked.add(line.rsplit(" ", 1)[1])
            if acked:
                # The manager acknowledged the first result; it may already have sent the next task in the same
                # breath: stopping the worker now returns that one to the manager's queue (Work Queue requeues
                # tasks of a worker that leaves), so this worker completes exactly one task.
                extra = received - acked
                print("single task: %s done and acknowledged; stopping the worker%s" % (
                    ",".join(sorted(acked)), " (returning %s)" % ",".join(sorted(extra)) if extra else ""), flush=True)
                self.child.terminate()
                return
            time.sleep(0.02)


def count(w: WorkerEnv) -> int:
    for role in ("foreman", "worker"):
        n = len(running(w, role))
        print("%s: %d running" % (_plural(role), n))
    return 0


def via_condor(w: WorkerEnv, n: int) -> int:
    """Workers kept alive as persistent HTCondor jobs: a pilot factory without cron."""
    from ..submit import Scheduler

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
        return Supervisor(w, a.role, a.index).run()
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
