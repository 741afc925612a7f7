"""The Work Queue executor's durable job table: SQLite in the work directory.  The only SQL of ``wq``.

It is the shims' spool (``condor_submit`` inserts, ``condor_rm`` marks) and
the manager's memory: after a manager restart every pilot and persistent job
is known again.  WAL mode and a busy timeout let the shims and the manager
use it at once.  Job ads for ``condor_q``/``condor_status`` are built from
these rows.
"""

import json
import os
import sqlite3
import time
import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

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
    later INTEGER NOT NULL DEFAULT 0,   -- consecutive 'try later' exits (the retry delay doubles)
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
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(jobs)")}
        if "later" not in cols:  # a table written by an older persistjob
            self.db.execute("ALTER TABLE jobs ADD COLUMN later INTEGER NOT NULL DEFAULT 0")

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

    def remove(self, cluster: Optional[int] = None, proc: Optional[int] = None, owner: Optional[str] = None) -> int:
        """condor_rm of the jobs selected (all of them when nothing is given): idle/held jobs leave at once,
        running ones once their task is cancelled."""
        where, params = self._select(cluster=cluster, proc=proc, owner=owner)
        cur = self.db.execute(
            "UPDATE jobs SET remove_requested = 1, status = %d, entered = ? WHERE status IN (%d, %d, %d) AND %s"
            % (REMOVED, IDLE, RUNNING, HELD, where), (int(time.time()), *params))
        return cur.rowcount

    @staticmethod
    def _select(**equal: Any) -> "tuple[str, tuple]":
        given = [(k, v) for k, v in equal.items() if v is not None]
        if not given:
            return "1", ()
        return " AND ".join("%s = ?" % k for k, _ in given), tuple(v for _, v in given)

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

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Many writes as one transaction (the manager's batches)."""
        self.db.execute("BEGIN")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def set_task(self, cluster: int, proc: int, task_id: Optional[int]) -> None:
        """Hand a job to a Work Queue task (or take it back with None); its status stays as it is."""
        self.db.execute("UPDATE jobs SET task_id = ? WHERE cluster = ? AND proc = ?", (task_id, cluster, proc))

    def mark_running(self, cluster: int, proc: int, now: float) -> None:
        """A worker started the job's task: idle -> running, one more start."""
        self.db.execute("UPDATE jobs SET status = ?, entered = ?, starts = starts + 1 WHERE cluster = ? AND proc = ? "
                        "AND status = ?", (RUNNING, int(now), cluster, proc, IDLE))

    def release_holds(self, subcode: int, now: float, limit: int) -> int:
        """Release persistent jobs held with ``subcode`` whose delay is over, while fewer than ``limit`` holds."""
        cur = self.db.execute(
            "UPDATE jobs SET status = ?, entered = ?, hold_reason = NULL WHERE status = ? AND kind = 'persistent' "
            "AND hold_subcode = ? AND not_before <= ? AND holds < ?", (IDLE, int(now), HELD, subcode, now, limit))
        return cur.rowcount

    # -- reads
    def job(self, cluster: int, proc: int) -> Optional[sqlite3.Row]:
        rows = self._rows("cluster = ? AND proc = ?", (cluster, proc))
        return rows[0] if rows else None

    def all(self) -> List[sqlite3.Row]:
        return self._rows()

    def with_task(self) -> List[sqlite3.Row]:
        """Jobs handed to a Work Queue task (by this manager or one before it)."""
        return self._rows("task_id IS NOT NULL")

    def ready(self, now: float, limit: int) -> List[sqlite3.Row]:
        """Idle jobs with no task whose delay is over, in submission order."""
        return self._rows("status = %d AND task_id IS NULL AND not_before <= ?" % IDLE, (now,), limit=limit)

    def removal_pending(self) -> List[sqlite3.Row]:
        """Jobs condor_rm marked whose task is still out."""
        return self._rows("remove_requested = 1 AND task_id IS NOT NULL")

    def dispatched(self) -> int:
        """How many jobs are handed to a task now."""
        return int(self.db.execute("SELECT COUNT(*) FROM jobs WHERE task_id IS NOT NULL").fetchone()[0])

    def _rows(self, where: str = "1", params: Sequence[Any] = (), limit: Optional[int] = None) -> List[sqlite3.Row]:
        sql = "SELECT * FROM jobs WHERE %s ORDER BY cluster, proc" % where
        if limit is not None:
            sql += " LIMIT %d" % int(limit)
        return self.db.execute(sql, params).fetchall()

    def queue(self) -> List[sqlite3.Row]:
        """What condor_q shows: jobs still in the queue, and removed ones whose task still runs."""
        return self._rows("status IN (%d, %d, %d) OR (status = %d AND task_id IS NOT NULL)" % (IDLE, RUNNING, HELD, REMOVED))

    def counts(self) -> Dict[int, int]:
        out = {s: 0 for s in (IDLE, RUNNING, REMOVED, COMPLETED, HELD)}
        for r in self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            out[int(r[0])] = int(r[1])
        return out
