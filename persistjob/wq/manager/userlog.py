"""HTCondor-style job event log lines (the ``log =`` file of a pilot)."""

import time


def event(path: str, code: int, cluster: int, proc: int, text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        with open(path, "a") as f:
            f.write("%03d (%03d.%03d.000) %s %s\n...\n" % (code, cluster, proc, stamp, text))
    except OSError:
        pass  # a pilot's log is informative; never fail the job over it


def submitted(path: str, cluster: int, proc: int, port: int) -> None:
    event(path, 0, cluster, proc, "Job submitted from host: <127.0.0.1:%d?...>" % port)


def terminated(path: str, cluster: int, proc: int, code: int) -> None:
    event(path, 5, cluster, proc, "Job terminated.\n\t(1) Normal termination (return value %d)" % code)
