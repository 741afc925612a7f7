"""The Work Queue executor's durable job table: SQLite in the work directory.

It is the shims' spool (``condor_submit`` inserts, ``condor_rm`` marks) and
the manager's memory: after a manager restart every pilot and persistent job
is known again.  WAL mode and a busy timeout let the shims and the manager
use it at once.  Job ads for ``condor_q``/``condor_status`` are built from
these rows.
"""

import json
import os
import socket
import sqlite3
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

# HTCondor job states
IDLE, RUNNING, REMOVED, COMPLETED, HELD = 1, 2, 3, 4, 5
IN_QUEUE = (IDLE, RUNNING, HELD)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    cluster INTEGER NOT NULL,
    proc INTEGER NOT NULL,
    kind TEXT NOT NULL,                 -- 'pilot' or 'persistent'
    status INTEGER NOT NULL,
    owner TEXT NOT NULL,
    cmd TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '[]',    -- JSON list
    env TEXT NOT NULL DEFAULT '{}',     -- JSON object
    iwd TEXT NOT NULL DEFAULT '',
    output TEXT, error TEXT, log TEXT,
    attrs TEXT NOT NULL DEFAULT '{}',   -- JSON: custom attributes as ClassAd expressions
    qdate INTEGER NOT NULL,
    entered INTEGER NOT NULL,
    exit_code INTEGER,
    hold_reason TEXT,
    hold_subcode INTEGER,
    task_id INTEGER,
    starts INTEGER NOT NULL DEFAULT 0,
    holds INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    job_id TEXT,
    remove_requested INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (cluster, proc)
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""


def default_work_dir() -> str:
    return os.environ.get("AWQ_WORKDIR") or "/tmp/awq"


class JobTable:
    def __init__(self, work_dir: str, create: bool = True) -> None:
        self.work_dir = os.path.abspath(work_dir)
        self.path = os.path.join(self.work_dir, "jobs.db")
        if create:
            os.makedirs(self.work_dir, exist_ok=True)
        elif not os.path.exists(self.path):
            raise FileNotFoundError(self.path)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- writes (each one transaction)
    def submit(self, jobs: Union[Sequence[Dict[str, Any]], Callable[[int], Sequence[Dict[str, Any]]]]) -> int:
        """Insert the procs of one new cluster; return its id (persistent across restarts).

        ``jobs`` may be a function of the new cluster id (for ``$(Cluster)`` in values).
        """
        now = int(time.time())
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            row = cur.execute("SELECT value FROM meta WHERE key = 'next_cluster'").fetchone()
            cluster = int(row[0]) if row else 1
            cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_cluster', ?)", (str(cluster + 1),))
            for proc, j in enumerate(jobs(cluster) if callable(jobs) else jobs):
                cur.execute(
                    "INSERT INTO jobs (cluster, proc, kind, status, owner, cmd, args, env, iwd, output, error, log, attrs,"
                    " qdate, entered, job_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (cluster, proc, j.get("kind", "pilot"), IDLE, j["owner"], j["cmd"], json.dumps(j.get("args", [])),
                     json.dumps(j.get("env", {})), j.get("iwd", ""), j.get("output"), j.get("error"), j.get("log"),
                     json.dumps(j.get("attrs", {})), now, now, (j.get("job_id") or "").replace("$(Process)", str(proc)) or None))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return cluster

    def remove(self, where: str, params: Sequence[Any] = ()) -> int:
        """condor_rm: idle/held jobs leave at once, running ones once their task is cancelled."""
        now = int(time.time())
        cur = self.db.execute(
            "UPDATE jobs SET remove_requested = 1, status = %d, entered = ? WHERE status IN (%d, %d, %d) AND (%s)"
            % (REMOVED, IDLE, RUNNING, HELD, where), (now, *params))
        return cur.rowcount

    def update(self, cluster: int, proc: int, unless_removed: bool = False, **fields: Any) -> bool:
        """Update one job; with ``unless_removed``, leave a job that condor_rm marked alone (but for its task)."""
        if "status" in fields and "entered" not in fields:
            fields["entered"] = int(time.time())
        cols = ", ".join("%s = ?" % k for k in fields)
        cond = " AND remove_requested = 0" if unless_removed else ""
        cur = self.db.execute("UPDATE jobs SET %s WHERE cluster = ? AND proc = ?%s" % (cols, cond),
                              (*fields.values(), cluster, proc))
        if unless_removed and cur.rowcount == 0:
            self.db.execute("UPDATE jobs SET task_id = NULL WHERE cluster = ? AND proc = ?", (cluster, proc))
            return False
        return True

    # -- reads
    def rows(self, where: str = "1", params: Sequence[Any] = (), limit: Optional[int] = None) -> List[sqlite3.Row]:
        sql = "SELECT * FROM jobs WHERE %s ORDER BY cluster, proc" % where
        if limit is not None:
            sql += " LIMIT %d" % int(limit)
        return self.db.execute(sql, params).fetchall()

    def queue(self) -> List[sqlite3.Row]:
        """What condor_q shows: jobs still in the queue, and removed ones whose task still runs."""
        return self.rows("status IN (%d, %d, %d) OR (status = %d AND task_id IS NOT NULL)" % (IDLE, RUNNING, HELD, REMOVED))

    def counts(self) -> Dict[int, int]:
        out = {s: 0 for s in (IDLE, RUNNING, REMOVED, COMPLETED, HELD)}
        for r in self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            out[int(r[0])] = int(r[1])
        return out


def environment_string(env: Dict[str, str]) -> str:
    """An environment in HTCondor's new syntax, as condor_q shows it: 'A=1 B=2'."""
    parts = []
    for k, v in sorted(env.items()):
        if any(c in v for c in " '\t"):
            v = "'" + v.replace("'", "''") + "'"
        parts.append("%s=%s" % (k, v))
    return " ".join(parts)


def job_ad(row: sqlite3.Row, schedd_host: Optional[str] = None) -> Dict[str, Any]:
    """The ClassAd attributes of one job, as Python values (custom ones as expression strings)."""
    args = json.loads(row["args"])
    env = json.loads(row["env"])
    host = schedd_host or socket.gethostname()
    ad: Dict[str, Any] = {
        "ClusterId": row["cluster"],
        "ProcId": row["proc"],
        "JobStatus": row["status"],
        "Owner": row["owner"],
        "User": "%s@%s" % (row["owner"], host),
        "Cmd": row["cmd"],
        "Iwd": row["iwd"],
        "QDate": row["qdate"],
        "EnteredCurrentStatus": row["entered"],
        "NumJobStarts": row["starts"],
        "JobUniverse": 5,
        "GlobalJobId": "%s#%d.%d#%d" % (host, row["cluster"], row["proc"], row["qdate"]),
    }
    if args:
        ad["Args"] = " ".join(args)
    ad["Environment"] = environment_string(env)  # HTCondor always defines it ("" when empty)
    for key, attr in (("output", "Out"), ("error", "Err"), ("log", "UserLog")):
        if row[key]:
            ad[attr] = row[key]
    if row["exit_code"] is not None:
        ad["ExitCode"] = row["exit_code"]
    if row["hold_reason"]:
        ad["HoldReason"] = row["hold_reason"]
        ad["HoldReasonCode"] = 3
        ad["HoldReasonSubCode"] = row["hold_subcode"] or 0
        ad["NumHolds"] = row["holds"]
    if row["job_id"]:
        ad["PersistJobId"] = row["job_id"]
        ad["PersistJob"] = True
    ad["_custom"] = json.loads(row["attrs"])
    return ad


def iter_ads(rows: Iterable[sqlite3.Row]) -> Iterable[Dict[str, Any]]:
    host = socket.gethostname()
    for r in rows:
        yield job_ad(r, host)
