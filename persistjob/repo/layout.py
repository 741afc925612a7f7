"""The store's key layout: the only place where a stored object's key is spelled.

Under ``<store URL>/<sha256(job id)>/``::

    log/000000000001     append-only records, written create-if-absent (the fencing)
    manifests/<sha256>   a generation's file list (persistjob.codec)
    chunks/<sha256>      content chunks (persistjob.codec); the name is the hash of the raw data
    runs/<run>-<seq>     per-run accounting (JSON)

and under two store-wide prefixes, so that ``status`` lists every job's at once:

    summary/<sha256(job id)>/<state>    an object whose *name* carries a recent log record's state
                                        (``summary_name``; its body is the record), rewritten after
                                        each append (best effort)
    fenced/<sha256(job id)>/<time>-<pid>  notes left by instances that were refused (outside the log)

A store whose ``store.json`` says ``{"dedup": "store"}`` (chosen with ``?dedup=store`` in the URL of
its first writer) keeps chunks once for all its jobs, and the pieces of its store-wide gc:

    store.json               the store's mode (persistjob.repo.shared)
    chunks/<sha256>          content chunks of every job (instead of each job's own ``chunks/``)
    jobs/<sha256(job id)>    a job's registration (body: its ID), written at its first claim: gc's list of jobs
    gc/lease                 held by a store gc pass while it runs

Stores written before these existed have notes under ``<sha256(job id)>/fenced/`` and a ``head``
hint; the notes are still read for one job (``JobLog.fenced_notes``), the hint is not.
"""

import hashlib
from typing import Any, Dict, NamedTuple, Optional


#: The store-wide prefix of fenced notes: ``fenced/<job key>/<time>-<pid>``.
FENCED_ROOT = "fenced/"
#: The store's mode (absent: every job keeps its own chunks).
STORE_CONFIG = "store.json"
#: Chunks shared by every job of a ``dedup=store`` store.
SHARED_CHUNK_ROOT = "chunks/"
#: Registrations of the jobs of a ``dedup=store`` store: ``jobs/<job key>``.
JOBS_ROOT = "jobs/"
#: The lease a store gc pass holds while it runs.
GC_LEASE = "gc/lease"
#: The store-wide prefix of summaries: ``summary/<job key>/<state>``.
SUMMARY_ROOT = "summary/"


class Summary(NamedTuple):
    """A job's state as a summary's key name carries it: the record's sequence number, kind, run,
    generation, crash streak and lost runs, and the newest commit (time, seconds, bytes, generation)."""

    seq: int
    kind: str
    run: int
    generation: int
    crash_streak: int
    lost: int
    committed: Optional[Dict[str, Any]]


def summary_name(s: Summary) -> str:
    """``<seq>.<kind>.<run>.<generation>.<crash streak>.<lost>``, then when there was a commit
    ``.<its time, ms>.<its duration, ms>.<its bytes>.<its generation>``."""
    parts = ["%012d" % s.seq, s.kind, str(s.run), str(s.generation), str(s.crash_streak), str(s.lost)]
    c = s.committed
    if c is not None:
        parts += [str(int(round(float(c.get("time", 0)) * 1000))),
                  str(int(round(float(c.get("seconds", 0) or 0) * 1000))),
                  str(int(c.get("bytes", 0) or 0)), str(int(c.get("generation", 0) or 0))]
    return ".".join(parts)


def parse_summary(name: str) -> Optional[Summary]:
    """The state in a summary's name (None for a name that is not one)."""
    p = name.split(".")
    if len(p) not in (6, 10) or not p[1].isalpha() or not all(x.isdigit() for i, x in enumerate(p) if i != 1):
        return None
    committed = None
    if len(p) == 10:
        committed = {"time": int(p[6]) / 1000.0, "seconds": int(p[7]) / 1000.0, "bytes": int(p[8]),
                     "generation": int(p[9])}
    return Summary(int(p[0]), p[1], int(p[2]), int(p[3]), int(p[4]), int(p[5]), committed)


def job_key(job_id: str) -> str:
    """Storage key of a job: hex sha256 of its ID."""
    return hashlib.sha256(job_id.encode("utf-8")).hexdigest()


class Layout:
    """Keys of one job's objects."""

    def __init__(self, job_id: str) -> None:
        self.key = job_key(job_id)
        self.root = self.key + "/"
        self.log_dir = self.root + "log/"
        self.manifest_dir = self.root + "manifests/"
        self.chunk_dir = self.root + "chunks/"
        self.run_dir = self.root + "runs/"
        self.fenced_dir = FENCED_ROOT + self.root
        self.old_fenced_dir = self.root + "fenced/"
        self.summary_dir = SUMMARY_ROOT + self.root
        self.registration = JOBS_ROOT + self.key

    def summary(self, s: Summary) -> str:
        return self.summary_dir + summary_name(s)

    def log(self, seq: int) -> str:
        return "%s%012d" % (self.log_dir, seq)

    def manifest(self, manifest_id: str) -> str:
        return self.manifest_dir + manifest_id

    def chunk(self, digest: str) -> str:
        return self.chunk_dir + digest

    @staticmethod
    def shared_chunk(digest: str) -> str:
        return SHARED_CHUNK_ROOT + digest

    def run(self, run: int, seq: int) -> str:
        return "%s%08d-%012d" % (self.run_dir, run, seq)

    def probe(self, nonce: str) -> str:
        """A throw-away key for checking that the store refuses a second create."""
        return "%sprobe-%s" % (self.root, nonce)

    def fenced(self, when: float, pid: int) -> str:
        return "%s%d-%d" % (self.fenced_dir, int(when), pid)

    @staticmethod
    def name(key: str) -> str:
        """The last component of a key (a sequence number, a hash, a note's name)."""
        return key.rsplit("/", 1)[-1]

    @classmethod
    def seq_of(cls, key: str) -> Optional[int]:
        """The sequence number of a log key, or None for anything else."""
        name = cls.name(key)
        return int(name) if name.isdigit() else None

    @staticmethod
    def owner(key: str) -> str:
        """The job key an object under a store-wide prefix belongs to (``<prefix>/<job key>/...``)."""
        return key.split("/", 2)[1]

    @classmethod
    def fenced_time(cls, key: str) -> Optional[int]:
        """The time (whole seconds) in a fenced note's name, so old notes need not be read."""
        stamp = cls.name(key).split("-", 1)[0]
        return int(stamp) if stamp.isdigit() else None
