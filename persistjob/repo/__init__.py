"""The repository layer: one job's stored checkpoints, and every rule over them.

:class:`JobRepo` is the only code that knows how a job lives in a store (the key layout is in
``layout.py``, the fenced log in ``log.py``): claiming a run, publishing a generation, restoring the
newest intact one (falling back past damaged ones), retention, the crash streak, garbage
collection, verification and purging.  The wrapper, the CLI's ``checkpoint`` commands, ``status``
and ``rm --purge`` all go through it; none of them builds a key.
"""

import hashlib
import logging
import os
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

from .. import constants as C
from ..checkpoint import Checkpointer, ChunkStore, Snapshot, Stats
from ..codec import Entry, decode_chunk, decode_manifest, encode_manifest
from ..errors import (
    ConfigError,
    Fenced,
    IntegrityError,
    JobRemoved,
    NoIntactGeneration,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
    StoreCannotFence,
    UnsafeManifest,
)
from ..storage import Backend
from . import shared
from .layout import FENCED_ROOT, SUMMARY_ROOT, Layout, Summary, job_key, parse_summary
from .log import EMPTY, JobLog, Record, host_name

log = logging.getLogger(__name__)

__all__ = ["JobRepo", "Restored", "Record", "EMPTY", "Layout", "job_key", "host_name", "retained_after", "fenced_index",
           "summary_index", "Summary"]

Generation = Tuple[int, str]  # (generation number, manifest id)


class _Chunks(ChunkStore):
    """A job's chunks: under its own key, or store-wide in a ``dedup=store`` store (the store says
    which, read at the first use)."""

    def __init__(self, store: Backend, keys: Layout) -> None:
        self.store, self.keys = store, keys

    @property
    def shared(self) -> bool:
        return shared.store_config(self.store).dedup

    def key(self, digest: str) -> str:
        return Layout.shared_chunk(digest) if self.shared else self.keys.chunk(digest)

    def put(self, digest: str, blob: bytes) -> None:
        self.store.put(self.key(digest), blob, immutable=True)

    def skip(self, digest: str) -> bool:
        """Another job stored it (the commit confirms it again before publishing)."""
        return self.shared and self.store.exists(self.key(digest))

    def get(self, digest: str) -> bytes:
        try:
            return self.store.get(self.key(digest))
        except ObjectNotFound:
            if not self.shared:
                raise
            # A writer that read store.json just before the store's first ?dedup=store writer created it
            # kept its chunks under its own key: read them there.
            return self.store.get(self.keys.chunk(digest))


class Restored(NamedTuple):
    generation: int  # 0: nothing was committed yet (a fresh start)
    stats: Stats
    fallbacks: List[Dict[str, Any]]  # damaged generations passed over, newest first


def retained_after(new: Generation, old: Iterable[Generation], keep: int, drop: Iterable[str] = ()) -> Tuple[Generation, ...]:
    """Generations kept after committing ``new``: the newest ``keep``."""
    dropped = set(drop)
    out = [new] + [r for r in old if r[1] != new[1] and r[1] not in dropped]
    return tuple(out[:max(1, keep)])


def _digests(entries: Iterable[Entry]) -> Set[str]:
    return {h for e in entries for h, _ in e.chunks}


def fenced_index(store: Backend, since: float) -> Dict[str, List[float]]:
    """Every job's fenced-note times since ``since``, by job key, from one listing of the store-wide
    prefix (the time is in a note's name: nothing is read).  Notes under the pre-summary per-job
    prefix are not seen here; :meth:`JobRepo.fenced_notes` reads them."""
    out: Dict[str, List[float]] = {}
    for o in store.list(FENCED_ROOT):
        stamp = Layout.fenced_time(o.key)
        if stamp is not None and stamp >= int(since):
            out.setdefault(Layout.owner(o.key), []).append(float(stamp))
    return out


def summary_index(store: Backend) -> Dict[str, Summary]:
    """Every job's newest summary, by job key, from one listing of the store-wide prefix (a thousand
    jobs per request on S3: the state is in the names, nothing is read)."""
    out: Dict[str, Summary] = {}
    for o in store.list(SUMMARY_ROOT):
        s = parse_summary(Layout.name(o.key))
        if s is not None:
            job = Layout.owner(o.key)
            if job not in out or s.seq > out[job].seq:
                out[job] = s
    return out


#: How often a claim that lost the race for the next log record to a commit or an end record tries again.
CLAIM_ATTEMPTS = 5


# Size: one job's stored state has one owner: every operation on it (a run's claim, restore, commit and
# end; upkeep: gc, verify, retire, purge; the fencing check) is here, each a method of a few lines.
class JobRepo:
    """One job in one store.  Reading needs nothing more; a run calls :meth:`claim` first and then
    :meth:`restore`, :meth:`commit` and :meth:`end_run`, each appending to the fenced log."""

    def __init__(self, store: Backend, job_id: str, *, keep: int = C.DEFAULT_KEEP,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.job_id = job_id
        self.keep = keep
        self.clock = clock
        self.log = JobLog(store, job_id, clock)
        self.keys = self.log.keys
        self.chunks = _Chunks(store, self.keys)
        #: The newest record this instance wrote (after :meth:`claim`).
        self.mine: Record = EMPTY
        #: Generations a restore may use, newest first (damaged ones dropped once seen).
        self.retained: Tuple[Generation, ...] = ()
        #: The chunks of manifests this instance restored or wrote, by manifest id (in a shared store, a
        #: commit need not check those that its own published generations reference).
        self._refs: Dict[str, Set[str]] = {}

    @property
    def key(self) -> str:
        return self.keys.key

    # ------------------------------------------------------------------ reading
    def head(self) -> Record:
        return self.log.head()

    def generations(self) -> List[Record]:
        """Every commit record, oldest first."""
        return [r for r in self.log.records() if r.kind == "commit"]

    def last_commit(self, head: Optional[Record] = None) -> Optional[Record]:
        return self.log.last_commit(head)

    def pick(self, generation: Optional[int] = None) -> Generation:
        """The newest generation, or the one asked for (ConfigError when there is none such)."""
        if generation is None:
            head = self.head()
            if not head.manifest:
                raise ConfigError("job %s has no committed generation" % self.job_id)
            return head.generation, head.manifest
        for r in self.generations():
            if r.generation == generation and r.manifest:
                return r.generation, r.manifest
        raise ConfigError("job %s has no generation %d" % (self.job_id, generation))

    def manifest(self, manifest_id: str, stats: Optional[Stats] = None) -> Tuple[List[Entry], Dict[str, Any]]:
        """A generation's verified entries and metadata; a missing or damaged one is an IntegrityError."""
        try:
            blob = self.store.get(self.keys.manifest(manifest_id))
        except ObjectNotFound:
            raise IntegrityError("manifest %s is missing" % manifest_id[:12]) from None
        if stats is not None:
            stats.add(transferred=len(blob))
        return decode_manifest(blob, manifest_id)

    def runs(self) -> List[Dict[str, Any]]:
        return self.log.runs()

    def summary(self) -> Optional[Summary]:
        """The job's summary: a recent record's state, one listing (maybe behind the log; never ahead)."""
        return self.log.summary()

    def fenced_notes(self, since: Optional[float] = None) -> List[Dict[str, Any]]:
        return self.log.fenced_notes(since)

    # ------------------------------------------------------------------ a run
    def claim(self) -> Record:
        """Take the job: append a claim record (Fenced when another start claimed it at the same moment).

        A run that vanished without an end record (its claim or a commit is still the newest record:
        its node or starter was killed) is counted as lost, not in the crash streak, which only the payload's own
        failures feed.  A removed job is never taken again (JobRemoved, 78).
        """
        head = self.head()  # first: a missing bucket or bad credentials are told by a read
        self.check_fencing()
        if self.chunks.shared:
            shared.register(self.store, self.keys, self.job_id)
        for attempt in range(CLAIM_ATTEMPTS):
            if head.kind == "removed":
                raise JobRemoved("job %s was removed (persistjob rm at %s); not running it again" % (
                    self.job_id, time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(head.data.get("time", 0)))))
            lost = head.lost + (1 if head.kind in ("claim", "commit") else 0)  # the last run wrote no end record
            try:
                self.mine = self.log.append(head, "claim", run=head.run + 1, lost=lost,
                                            data={"host": host_name(), "pid": os.getpid()})
                break
            except Fenced:
                # Losing to another claim means a newer start owns the job.  Losing to a commit or an end
                # record means the instance this start replaces was still writing: the scheduler started
                # this one, so it takes over (a bounded number of times).
                head = self.head()
                if head.kind == "claim" or attempt == CLAIM_ATTEMPTS - 1:
                    raise
        if self.mine.retained:
            self.retained = self.mine.retained
        elif self.mine.manifest:
            self.retained = ((self.mine.generation, self.mine.manifest),)
        return self.mine

    def check_fencing(self) -> None:
        """Fencing rests on the store refusing a second create of one key.  Some S3 servers and
        gateways ignore ``If-None-Match: *``: create a probe key twice, and refuse such a store
        (StoreCannotFence, 78) unless its URL says ``?fencing=unsafe``."""
        if getattr(self.store, "fencing_unsafe", False):
            return
        key = self.keys.probe(uuid.uuid4().hex)
        self.store.put_if_absent(key, b"first")
        try:
            self.store.put_if_absent(key, b"second")
        except ObjectExists:
            return
        finally:
            try:
                self.store.delete(key)
            except StorageError:
                pass
        raise StoreCannotFence("%s accepted a second create of the same key (If-None-Match ignored): it cannot keep "
                               "two instances of a job from both committing; use a store that honours conditional "
                               "writes, or add ?fencing=unsafe to the store URL to accept that risk"
                               % self.store.url.split("?", 1)[0])

    def workspace(self, root: str, **kw: Any) -> Checkpointer:
        """A checkpoint directory bound to this job's chunks."""
        return Checkpointer(self.chunks, root, **kw)

    def restore(self, ws: Checkpointer, generation: Optional[int] = None, fallback: bool = True,
                accept: Optional[Callable[[int], None]] = None) -> Restored:
        """Restore into ``ws`` the newest retained generation (or the one asked for).

        A generation that fails verification, or that ``accept`` (called with its files in place)
        rejects with an IntegrityError, is passed over for the previous retained one when ``fallback``
        is true (each one named in the result), else it is refused.  When none restores intact:
        :class:`NoIntactGeneration` — never a silent fresh start.  Nothing committed yet: generation 0
        and the directory left as it is.
        """
        if generation is not None:
            candidates: List[Generation] = [self.pick(generation)]
        else:
            candidates = list(self.retained or self.head().retained)
        if not candidates:
            return Restored(0, Stats(), [])
        fallbacks: List[Dict[str, Any]] = []
        for gen, mid in candidates:
            stats = Stats()
            try:
                entries, _meta = self.manifest(mid, stats)
                ws.restore(entries, stats)
                self._refs[mid] = _digests(entries)
                if accept is not None:
                    accept(gen)
            except IntegrityError as exc:
                fallbacks.append({"generation": gen, "manifest": mid, "error": str(exc)})
                if not fallback:
                    raise IntegrityError("generation %d cannot be restored: %s" % (gen, exc)) from None
                log.warning("restore: generation %d is damaged (%s); falling back to the previous generation", gen, exc)
                continue
            damaged = {f["manifest"] for f in fallbacks}
            self.retained = tuple(r for r in (self.retained or candidates) if r[1] not in damaged)
            return Restored(gen, stats, fallbacks)
        refused = NoIntactGeneration("none of the %d retained generations restored intact (newest: %s); refusing to "
                                     "start fresh; inspect with 'persistjob checkpoint verify'"
                                     % (len(candidates), fallbacks[0]["error"]))
        refused.fallbacks = fallbacks
        raise refused

    def before_snapshot(self, cancel: Callable[[], bool] = lambda: False) -> None:
        """In a shared store, let a running gc pass finish before snapshotting (see :func:`shared.await_passes`)."""
        if self.chunks.shared:
            shared.await_passes(self.store, cancel=cancel)

    def commit(self, ws: Checkpointer, snap: Snapshot, started: Optional[float] = None) -> Record:
        """Upload a snapshot's chunks and manifest and publish it as the next generation (``started``:
        the ``time.monotonic()`` at which the checkpoint began, for the record's duration).  In a shared
        store the chunks it names are confirmed first (:func:`shared.confirm`)."""
        ws.upload(snap)
        blob = encode_manifest(snap.entries, {"created": self.clock(), "chunk_size": ws.chunk_size}, ws.codec)
        manifest_id = hashlib.sha256(blob).hexdigest()
        refs = _digests(snap.entries)
        cfg = shared.store_config(self.store)
        mine = set().union(*(self._refs.get(m, set()) for _, m in self.retained))  # live all along: no check
        publish_by: Optional[float] = None
        for attempt in range(shared.CONFIRM_ATTEMPTS):
            self.store.put(self.keys.manifest(manifest_id), blob, immutable=True)
            if not cfg.dedup:
                break
            try:
                checked = shared.confirm(self.store, cfg, self.keys.manifest(manifest_id), refs - mine,
                                         cancel=ws.cancel)
            except IntegrityError as exc:
                ws.forget(getattr(exc, "missing", ()))
                raise
            if shared.in_window(cfg, checked):
                publish_by = checked + cfg.window / 2
                break
            if attempt == shared.CONFIRM_ATTEMPTS - 1:
                raise shared.GcBusy("the chunk checks took longer than half the store's window (%.0f s); not published"
                                    % cfg.window)
        snap.stats.add(transferred=len(blob))
        gen = self.mine.generation + 1
        retained = retained_after((gen, manifest_id), self.retained, self.keep)
        st = snap.stats
        with shared.no_retries_after(self.store, publish_by):
            self.mine = self.log.append(self.mine, "commit", generation=gen, manifest=manifest_id, retained=retained,
                                        crash_streak=0, data={"files": st.files, "bytes": st.bytes,
                                                              "uploaded": st.transferred,
                                                              "seconds": round(time.monotonic() - started if started
                                                                               is not None else st.seconds, 3)})
        self.retained = retained
        self._refs[manifest_id] = refs
        self._refs = {m: self._refs[m] for _, m in retained if m in self._refs}
        return self.mine

    def failed_streak(self, committed_this_run: bool) -> int:
        """The crash streak after a run whose payload failed: reset by a commit in this run."""
        return 0 if committed_this_run else self.mine.crash_streak + 1

    def end_run(self, code: int, reason: str, crash_streak: Optional[int] = None, lost: bool = False) -> Record:
        changes: Dict[str, Any] = {} if crash_streak is None else {"crash_streak": crash_streak}
        if lost:
            changes["lost"] = self.mine.lost + 1
        self.mine = self.log.append(self.mine, "end", data={"reason": reason, "exit_code": code}, **changes)
        return self.mine

    def superseded(self) -> bool:
        """True when another instance appended after our newest record."""
        return self.log.superseded(self.mine)

    def note_fenced(self, why: str) -> None:
        self.log.note_fenced(self.mine.seq, why)

    def put_run(self, run: int, seq: int, info: Dict[str, Any]) -> None:
        self.log.put_run(run, seq, info)

    # ------------------------------------------------------------------ upkeep
    def gc(self, grace: float = 3600.0, retained: Optional[Iterable[Generation]] = None,
           still_owner: Callable[[], bool] = lambda: True, now: Optional[float] = None) -> Dict[str, int]:
        """Delete manifests and chunks that no retained generation references.

        Objects younger than ``grace`` seconds are spared (a new owner may be uploading them), and
        ``still_owner`` is asked just before deleting anything.
        """
        now = self.clock() if now is None else now
        keep = list(self.head().retained if retained is None else retained)
        keep_manifests = {m for _, m in keep}
        referenced: Set[str] = set()
        for mid in keep_manifests:
            try:
                entries, _ = self.manifest(mid)
            except (IntegrityError, UnsafeManifest):
                continue
            referenced.update(h for e in entries for h, _ in e.chunks)
        doomed: List[str] = []
        freed = 0
        for o in self.store.list(self.keys.manifest_dir):
            if Layout.name(o.key) not in keep_manifests and now - o.mtime > grace:
                doomed.append(o.key)
                freed += o.size
        n_manifests = len(doomed)
        own_chunks = [] if self.chunks.shared else self.store.list(self.keys.chunk_dir)
        for o in own_chunks:  # shared chunks are the store gc's (persistjob store gc)
            if Layout.name(o.key) not in referenced and now - o.mtime > grace:
                doomed.append(o.key)
                freed += o.size
        if doomed and still_owner():
            self.store.delete_many(doomed)
        else:
            doomed = []
            freed = n_manifests = 0
        return {"manifests": n_manifests, "chunks": len(doomed) - n_manifests, "bytes": freed}

    def gc_as_owner(self, grace: float) -> Dict[str, int]:
        """:meth:`gc` by the running instance: only what it retains, and only while it owns the job."""
        return self.gc(grace, self.retained, still_owner=lambda: not self.superseded())

    def live_chunks(self, attempts: int = 5) -> Set[str]:
        """Every chunk the job's retained generations reference, for the store gc.  A manifest that is
        missing while the head still names it is damaged (skipped, with a warning); one that went
        because the head moved on means reading the head again."""
        for _ in range(attempts):
            head = self.head()
            out: Set[str] = set()
            moved = False
            for _gen, mid in head.retained:
                try:
                    entries, _ = self.manifest(mid)
                except (IntegrityError, UnsafeManifest) as exc:
                    if self.head().seq != head.seq:
                        moved = True
                        break
                    log.warning("gc: job %s: generation manifest %s: %s (its chunks are not kept for it)",
                                self.job_id, mid[:12], exc)
                    continue
                out |= _digests(entries)
            if not moved:
                return out
        raise StorageUnavailable("job %s's log kept moving while gc read it; try again" % self.job_id)

    def verify(self, generation: Optional[int] = None) -> List[Tuple[int, Optional[str], Stats]]:
        """Check every chunk of the retained generations (or one): (generation, error or None, stats)."""
        targets = [self.pick(generation)] if generation is not None else list(self.head().retained)
        out: List[Tuple[int, Optional[str], Stats]] = []
        for gen, mid in targets:
            stats = Stats()
            try:
                entries, _ = self.manifest(mid)
                seen: Set[str] = set()
                for e in entries:
                    stats.add(files=1 if e.type == "f" else 0)
                    for digest, n in e.chunks:
                        if digest in seen:
                            continue
                        seen.add(digest)
                        try:
                            blob = self.chunks.get(digest)
                        except ObjectNotFound:
                            raise IntegrityError("chunk %s is missing" % digest[:12]) from None
                        decode_chunk(blob, digest, n)
                        stats.add(transferred=len(blob), chunks_new=1)
                out.append((gen, None, stats))
            except (IntegrityError, UnsafeManifest) as exc:
                out.append((gen, str(exc), stats))
        return out

    def retire(self, reason: str = "removed") -> Record:
        """Append a removal record: a wrapper still running anywhere (an orphan of a grid job, a
        partitioned worker) meets it at its next commit or lease check and stops without writing,
        as it stops for a newer claim; no run claims the job again."""
        head = self.head()
        if head.kind == "removed":
            return head
        self.mine = self.log.append(head, "removed", data={"reason": reason})
        return self.mine

    def purge(self) -> int:
        """Delete every stored object of the job (``rm --purge``) but its removal record, which stays
        as a tombstone so that a stale instance can never start the job again; return the count."""
        head = self.head()
        keep = {self.keys.log(head.seq)} if head.kind == "removed" else set()
        keys = [o.key for o in self.store.list(self.keys.root) if o.key not in keep]
        for prefix in (self.keys.fenced_dir, self.keys.summary_dir, self.keys.registration):
            keys += [o.key for o in self.store.list(prefix)]
        self.store.delete_many(keys)
        return len(keys)
