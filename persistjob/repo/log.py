"""The job's commit log: append-only records written create-if-absent, which is the fencing.

A record is one of ``claim`` (a run takes the job), ``commit`` (a generation is published), ``end``
(a run ended in order).  Every record carries the job's current state (run number, generation,
manifest, retained generations, crash streak, and when the newest commit was made, how long it took
and how big it was), so the newest record alone says everything the next run and ``status`` need.
Two writers can never both create record N+1: the loser is *fenced* and stops.  Log records are never
deleted.  After each append the writer names the record's state in the job's *summary* (an object
whose key carries it and whose body is the record, best effort; the older summaries it knows of are
deleted): the log's head search starts there, and ``status`` lists every job's summary at once.  A
summary may be behind the log (its writer died between the two writes, or an older instance's landed
late); it is never ahead.
"""

import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from ..codec import FORMAT_VERSION, check_format, is_hash
from ..errors import Fenced, IntegrityError, ObjectExists, ObjectNotFound
from ..storage import Backend
from .layout import Layout, Summary, parse_summary

log = logging.getLogger(__name__)

#: claim: a run takes the job; commit: a generation is published; end: a run ended in order;
#: removed: the job was removed (persistjob rm): any instance still running is fenced by it.
KINDS = ("claim", "commit", "end", "removed")


def host_name() -> str:
    return socket.gethostname()


class Record(NamedTuple):
    seq: int
    kind: str
    run: int
    generation: int
    manifest: Optional[str]
    retained: Tuple[Tuple[int, str], ...]
    crash_streak: int  # consecutive runs whose payload itself failed, without a new commit
    data: Dict[str, Any]
    lost: int = 0  # runs that vanished without an end record, or whose payload was killed from outside
    #: The newest commit as of this record: its time, seconds taken, bytes and generation (None in
    #: records written before it was carried: then walk back to the commit record).
    committed: Optional[Dict[str, Any]] = None

    def to_bytes(self) -> bytes:
        body = dict(self.data)
        body.update(v=FORMAT_VERSION, seq=self.seq, kind=self.kind, run=self.run, generation=self.generation,
                    manifest=self.manifest, retained=[list(r) for r in self.retained], crash_streak=self.crash_streak,
                    lost=self.lost)
        if self.committed is not None:
            body["committed"] = self.committed
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes, seq: int) -> "Record":
        try:
            d = json.loads(blob.decode())
            version = int(d.pop("v", 1))
            rec = cls(int(d.pop("seq")), str(d.pop("kind")), int(d.pop("run")), int(d.pop("generation")),
                      d.pop("manifest"), tuple((int(g), str(m)) for g, m in d.pop("retained")),
                      int(d.pop("crash_streak", 0)), d, int(d.pop("lost", 0)), d.pop("committed", None))
            if rec.committed is not None and not isinstance(rec.committed, dict):
                raise TypeError("committed is not an object")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError("log record %d is malformed: %s" % (seq, exc)) from None
        check_format(version, "log record %d" % seq)
        if rec.seq != seq or rec.kind not in KINDS:
            raise IntegrityError("log record %d is inconsistent" % seq)
        if rec.manifest is not None and not is_hash(rec.manifest):
            raise IntegrityError("log record %d names a bad manifest id" % seq)
        return rec


EMPTY = Record(0, "none", 0, 0, None, (), 0, {})


class JobLog:
    """The append-only, fenced log of one job."""

    def __init__(self, backend: Backend, job_id: str, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.job_id = job_id
        self.keys = Layout(job_id)
        self.clock = clock
        self._summaries: List[str] = []  # the summary keys this instance knows of (deleted at its next append)

    def summary(self) -> Optional[Summary]:
        """The newest of the job's summaries (one listing; maybe behind the log; None when there is none)."""
        self._summaries = [o.key for o in self.backend.list(self.keys.summary_dir)]
        found = [s for s in (parse_summary(Layout.name(k)) for k in self._summaries) if s is not None]
        return max(found, key=lambda x: x.seq) if found else None

    def get(self, seq: int) -> Record:
        return Record.from_bytes(self.backend.get(self.keys.log(seq)), seq)

    def head(self) -> Record:
        """The newest readable record (EMPTY when the job has no log yet): the summary, then a listing
        of the log from the summary's record on (the whole log without a summary)."""
        hint = self.summary()
        start = self.keys.log(hint.seq - 1) if hint is not None and hint.seq > 1 else None
        seqs = [s for s in (Layout.seq_of(o.key) for o in self.backend.list(self.keys.log_dir, start)) if s]
        if not seqs and start is not None:  # a summary from the future (a purged and reused store): ignore it
            seqs = [s for s in (Layout.seq_of(o.key) for o in self.backend.list(self.keys.log_dir)) if s]
        for seq in sorted(seqs, reverse=True):
            try:
                return self.get(seq)
            except IntegrityError as exc:
                log.warning("log: %s; using an older record", exc)
            except ObjectNotFound:
                continue
        if seqs:
            # Records exist but none we looked at was readable: the state is
            # unknown, and starting fresh would bury it.
            raise IntegrityError("no readable record in the job's log")
        return EMPTY

    def append(self, prev: Record, kind: str, **changes: Any) -> Record:
        """Create record prev.seq+1, or raise Fenced if another writer took it."""
        fields = dict(prev._asdict())
        data = dict(changes.pop("data", {}))
        data.setdefault("time", self.clock())
        data.setdefault("host", host_name())
        data.setdefault("pid", os.getpid())
        data.setdefault("nonce", uuid.uuid4().hex)
        fields.update(changes, seq=prev.seq + 1, kind=kind, data=data)
        if kind == "commit":
            fields["committed"] = {"time": data["time"], "seconds": data.get("seconds", 0),
                                   "bytes": data.get("bytes", 0), "generation": fields["generation"]}
        rec = Record(**fields)
        blob = rec.to_bytes()
        try:
            self.backend.put_if_absent(self.keys.log(rec.seq), blob)
        except ObjectExists:
            raise Fenced("log record %d was written by another instance of job %s" % (rec.seq, self.job_id)) from None
        self._summarize(rec, blob)
        return rec

    def _summarize(self, rec: Record, blob: bytes) -> None:
        """Name the record's state in a new summary, then delete the older ones this instance knows of.
        The summary holds the record's bytes: never an empty body (SeaweedFS 4.48 leaves the connection
        of an empty PUT unusable: the next request on it waits 60 s for its answer)."""
        key = self.keys.summary(Summary(rec.seq, rec.kind, rec.run, rec.generation, rec.crash_streak, rec.lost,
                                        rec.committed))
        try:
            self.backend.put(key, blob)
            old, self._summaries = [k for k in self._summaries if k != key], [key]
            if old:
                self.backend.delete_many(old)
        except Exception as exc:  # the summary is only a hint: readers check it against the log
            log.debug("could not update the job's summary: %s", exc)

    def superseded(self, mine: Record) -> bool:
        """True when someone appended after our newest record."""
        return self.backend.exists(self.keys.log(mine.seq + 1))

    def records(self) -> Iterator[Record]:
        for o in self.backend.list(self.keys.log_dir):
            seq = Layout.seq_of(o.key)
            if seq:
                try:
                    yield self.get(seq)
                except (IntegrityError, ObjectNotFound) as exc:
                    log.warning("log: %s", exc)

    def note_fenced(self, seq: int, why: str) -> None:
        """Leave a note (outside the log) that a stale instance was refused."""
        body = {"time": self.clock(), "host": host_name(), "pid": os.getpid(), "claim_seq": seq, "why": why}
        self.backend.put(self.keys.fenced(self.clock(), os.getpid()), json.dumps(body).encode())

    def fenced_notes(self, since: Optional[float] = None) -> List[Dict[str, Any]]:
        """The notes left by refused instances; with ``since``, only those written since then (the
        time is in the note's name, so older ones are not even read)."""
        out = []
        listed = list(self.backend.list(self.keys.fenced_dir)) + list(self.backend.list(self.keys.old_fenced_dir))
        for o in listed:
            stamp = Layout.fenced_time(o.key)
            if since is not None and stamp is not None and stamp < int(since):
                continue
            try:
                out.append(json.loads(self.backend.get(o.key).decode()))
            except (ObjectNotFound, ValueError, UnicodeDecodeError):
                continue
        return out

    def last_commit(self, head: Optional[Record] = None) -> Optional[Record]:
        """The newest commit record (walking back from the head)."""
        rec = head or self.head()
        while rec.seq > 0:
            if rec.kind == "commit":
                return rec
            try:
                rec = self.get(rec.seq - 1)
            except (ObjectNotFound, IntegrityError):
                return None
        return None

    def put_run(self, run: int, seq: int, info: Dict[str, Any]) -> None:
        self.backend.put(self.keys.run(run, seq), json.dumps(info, sort_keys=True).encode())

    def runs(self) -> List[Dict[str, Any]]:
        out = []
        for o in self.backend.list(self.keys.run_dir):
            try:
                out.append(json.loads(self.backend.get(o.key).decode()))
            except (ObjectNotFound, ValueError, UnicodeDecodeError):
                continue
        return out
