"""The sandbox HTCondor pool for the benchmarks (needs root): a command run in it, and the pool with a
SeaweedFS store for the length of one benchmark run.  The caller puts the repository on sys.path."""

import contextlib
import os
import shutil
import subprocess
import tempfile
from typing import Iterator

from tests.servers import SeaweedFS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANDBOX = os.path.join(REPO, "scripts", "condor-sandbox")


def sandbox(*cmd, env=None, check=True, timeout=900):
    """Run ``cmd`` in the chroot as the submit user; with ``check``, a failure ends the benchmark."""
    r = subprocess.run([SANDBOX, "run", "--", *cmd], env=dict(os.environ, **(env or {})), capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode:
        raise SystemExit("%s failed:\n%s%s" % (" ".join(cmd), r.stdout[-2000:], r.stderr[-2000:]))
    return r


@contextlib.contextmanager
def pool_and_store(prefix: str) -> Iterator[SeaweedFS]:
    """The pool up (down again afterwards unless it was up before) and a SeaweedFS server in a fresh
    directory named with ``prefix`` (stopped by PID and its directory removed afterwards)."""
    was_up = "running:" in subprocess.run([SANDBOX, "status"], capture_output=True, text=True).stderr
    server = None
    try:
        subprocess.run([SANDBOX, "up"], check=True)
        server = SeaweedFS(tempfile.mkdtemp(prefix=prefix)).start()
        yield server
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)
        if not was_up:
            subprocess.run([SANDBOX, "down"], check=True)
