"""CRIU without root: the payload's tree and criu itself in an unprivileged user namespace.

A job that does not run as root (an HTCondor job as its owner, a Slurm job as a user) cannot run criu
directly, and a site that installed nothing will not have put capabilities on a criu binary.  Linux's
unprivileged user namespaces give the job root *inside* a namespace it owns: ``unshare --user
--map-root-user --pid --fork --mount --mount-proc`` starts :func:`agent_main` as init of a new user,
PID and mount namespace with a ``/proc`` of its own (criu ``--unprivileged`` refuses to dump a task
whose ``/proc`` does not belong to its user namespace).  The agent starts the payload there, runs criu
dump and restore for the wrapper, and exits with the payload's status, so the namespace's lifetime is the
payload's.  The wrapper talks to it over a pipe, one JSON object per line (:class:`AgentCriu`, which has
:class:`~persistjob.worker.criu.Criu`'s methods).

Limits: criu's ``--unprivileged`` mode (no TCP connections, no mounts of its own, one user mapped); a
kernel that allows unprivileged user namespaces (``user.max_user_namespaces`` > 0, not in a chroot:
unshare(CLONE_NEWUSER) is refused to a chrooted process).
"""

import json
import os
import subprocess
import sys
import threading
from typing import IO, Any, Dict, List, Mapping, Optional

from ..errors import ConfigError
from .criu import CannotRunHere, Criu, CriuFailed

NAMESPACE = ("unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount", "--mount-proc", "--kill-child")
FIRST_PID = 1000
_ERRORS = {"CriuFailed": CriuFailed, "CannotRunHere": CannotRunHere}


def usable(environ: Mapping[str, str]) -> Optional[str]:
    """None when this process can make the namespace, else why not."""
    try:
        r = subprocess.run(list(NAMESPACE) + ["true"], capture_output=True, text=True, timeout=60, env=dict(environ))
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if r.returncode == 0:
        return None
    lines = r.stderr.strip().splitlines()
    return lines[-1] if lines else "exit %d" % r.returncode


def host_pid(parent: int, ns_pid: int) -> Optional[int]:
    """The host pid of ``parent``'s child whose pid in its own namespace is ``ns_pid``."""
    from .payload import _children

    for child in _children(parent):
        try:
            with open("/proc/%d/status" % child) as f:
                for line in f:
                    if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                        return child
        except (OSError, ValueError):
            continue
    return None


class AgentCriu:
    """The wrapper's side: start the agent, ask it to start, dump or restore the payload."""

    def __init__(self, exe: str, logdir: str, environ: Mapping[str, str]) -> None:
        self.exe, self.logdir, self.environ = exe, logdir, dict(environ)
        self.proc: Optional[subprocess.Popen] = None
        self.payload_pid: Optional[int] = None  # the payload's host pid

    def _agent(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            env = dict(self.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in [_package_root(), env.get("PYTHONPATH", "")] if p)
            # sys.executable is empty where Python cannot tell its own path (an HTCondor job has no PATH)
            python = sys.executable or os.readlink("/proc/self/exe")
            self.proc = subprocess.Popen(list(NAMESPACE) + [python, "-m", "persistjob.worker.criuns",
                                                            self.exe, self.logdir],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
                                         start_new_session=True)
        return self.proc

    def _ask(self, **req: Any) -> Dict[str, Any]:
        proc = self._agent()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            raise CriuFailed("the criu agent ended (exit %s) during %s" % (proc.poll(), req.get("op")))
        answer: Dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise _ERRORS.get(answer["error"], CriuFailed)(answer["message"])
        return answer

    def start(self, argv: List[str], env: Dict[str, str], cwd: str, out: str, err: str) -> subprocess.Popen:
        """Start the payload in the namespace; the agent's process stands for it (its exit status is the
        payload's)."""
        ns = self._ask(op="start", argv=argv, env=env, cwd=cwd, out=out, err=err)["pid"]
        self.payload_pid = host_pid(self._agent_pid(), ns)
        return self._agent()

    def _agent_pid(self) -> int:
        from .payload import _children

        assert self.proc is not None
        kids = _children(self.proc.pid)  # unshare --fork's child: the agent, init of the namespace
        return kids[0] if kids else -1

    def dump(self, pid: int, images: str, leave_running: bool) -> None:
        self._ask(op="dump", images=images, leave_running=leave_running)

    def check_cpu(self, images: str) -> None:
        self._ask(op="check_cpu", images=images)

    def restore(self, images: str) -> int:
        ns = self._ask(op="restore", images=images)["pid"]
        pid = host_pid(self._agent_pid(), ns)
        if pid is None:
            raise CriuFailed("the restored tree (pid %d in its namespace) is not the agent's child" % ns)
        self.payload_pid = pid
        return pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # unshare --kill-child: the agent, init, goes, and the namespace with it
            self.proc.wait()


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------- inside the namespace
def agent_main(argv: List[str]) -> int:
    exe, logdir = argv[0], argv[1]
    criu = Criu(exe, logdir, unprivileged=True)
    replies: IO[str] = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the reply pipe
    state: Dict[str, Any] = {"pid": None, "ending": False}
    lock = threading.Lock()

    def reply(obj: Dict[str, Any]) -> None:
        with lock:
            replies.write(json.dumps(obj) + "\n")
            replies.flush()

    def watch(pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        if state["ending"]:
            return  # ended by its final dump: the agent exits once it has answered
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)

    def follow(pid: int) -> None:
        state["pid"] = pid
        threading.Thread(target=watch, args=(pid,), daemon=True).start()

    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        try:
            if op == "start":
                # The payload's pids start at FIRST_PID, clear of the agent's threads and of the criu that
                # restores it in a later run's namespace (criu gives the tree its old pids back).
                with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                    f.write(str(FIRST_PID - 1))
                out = open(req["out"], "a")
                err = open(req["err"], "a")
                proc = subprocess.Popen(req["argv"], cwd=req["cwd"], env=req["env"], stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=err, start_new_session=True)
                out.close()
                err.close()
                follow(proc.pid)
                reply({"pid": proc.pid})
            elif op == "dump":
                if not req["leave_running"]:
                    state["ending"] = True
                criu.dump(state["pid"], req["images"], req["leave_running"])
                reply({"ok": True})
                if not req["leave_running"]:
                    return 0
            elif op == "check_cpu":
                criu.check_cpu(req["images"])
                reply({"ok": True})
            elif op == "restore":
                pid = criu.restore(req["images"])
                follow(pid)
                reply({"pid": pid})
            else:
                reply({"error": "CriuFailed", "message": "unknown request %r" % op})
        except (CriuFailed, ConfigError) as exc:
            state["ending"] = False
            reply({"error": type(exc).__name__, "message": exc.message})
        except OSError as exc:
            reply({"error": "CriuFailed", "message": "%s: %s" % (op, exc)})
    return 0


if __name__ == "__main__":
    sys.exit(agent_main(sys.argv[1:]))
