"""The store's key layout: the only place where a stored object's key is spelled.

Under ``<store URL>/<sha256(job id)>/``::

    log/000000000001     append-only records, written create-if-absent (the fencing)
    summary              a copy of a recent log record, rewritten after each append (best effort): the
                         start of the log's head search, and ``status``'s one read per job
    manifests/<sha256>   a generation's file list (persistjob.codec)
    chunks/<sha256>      content chunks (persistjob.codec); the name is the hash of the raw data
    runs/<run>-<seq>     per-run accounting (JSON)

and under ``<store URL>/fenced/<sha256(job id)>/``: ``<time>-<pid>``, notes left by instances that
were refused (outside the log; one store-wide prefix, so that ``status`` lists them all at once).
Stores written before the summary and the store-wide notes existed have notes under ``<sha256(job id)>/fenced/`` and a ``head`` hint; the
notes are still read for one job (``JobLog.fenced_notes``), the hint is not (the summary replaces it).
"""

import hashlib
from typing import Optional


#: The store-wide prefix of fenced notes: ``fenced/<job key>/<time>-<pid>``.
FENCED_ROOT = "fenced/"


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
        self.summary = self.root + "summary"

    def log(self, seq: int) -> str:
        return "%s%012d" % (self.log_dir, seq)

    def manifest(self, manifest_id: str) -> str:
        return self.manifest_dir + manifest_id

    def chunk(self, digest: str) -> str:
        return self.chunk_dir + digest

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
    def fenced_owner(key: str) -> str:
        """The job key a store-wide fenced note belongs to."""
        return key[len(FENCED_ROOT):].split("/", 1)[0]

    @classmethod
    def fenced_time(cls, key: str) -> Optional[int]:
        """The time (whole seconds) in a fenced note's name, so old notes need not be read."""
        stamp = cls.name(key).split("-", 1)[0]
        return int(stamp) if stamp.isdigit() else None
