"""One chunk namespace for every job of a store (``?dedup=store``), and the store-wide gc.

The store says its mode in ``store.json``; the first writer whose URL says ``?dedup=store`` creates
it (only in an empty store: jobs already stored keep their chunks under their own key).  From then on
every job reads and writes chunks under the store-wide prefix, whatever its URL says, except that an
explicit ``?dedup=job`` is refused (78): every writer agrees because the store decides.

Sharing needs a garbage collector that can never delete a chunk a commit relies on.  The protocol
(the argument is in docs/design.md, "Shared chunks across jobs"):

* a gc pass takes the lease ``gc/lease.<n>`` (create-if-absent, so one pass at a time), waits the
  store's *window* W, then reads every registered job's live manifests, lists the chunks and deletes
  those that no live manifest references and that are older than the lease minus the grace; it stops
  deleting when its lease's time is up and deletes its lease at the end;
* a commit (:func:`confirm`), after uploading, waits until no pass holds a live lease, then checks
  that every chunk its manifest names is present (but those that the job's own published generations
  already reference), and publishes within W/2 of that start, else checks again.

Times compared with an object's mtime are the store server's (mtimes of objects just written);
durations are the actor's monotonic clock.
"""

import contextlib
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Set, Tuple

from ..errors import ConfigError, IntegrityError, ObjectExists, ObjectNotFound, StorageUnavailable
from ..storage import Backend
from .layout import GC_LEASE, JOBS_ROOT, SHARED_CHUNK_ROOT, STORE_CONFIG, Layout

log = logging.getLogger(__name__)

#: W: a commit publishes within W/2 of starting its checks; a gc pass waits W after taking its lease
#: before it reads any job.  Requests are assumed to reach the server within W/2 of being sent.
DEFAULT_WINDOW = 300.0
#: A gc pass renews its lease (re-writes it) at least this often; a lease not renewed for this long
#: (plus a margin) is dead, and its pass, which stops deleting once a renewal is this overdue, too.
DEFAULT_LEASE = 600.0
#: How long a commit waits for a gc pass to finish before it gives up this time (the payload goes on).
COMMIT_WAIT = 120.0
#: How often a commit starts its checks again when it could not publish within W/2.
CONFIRM_ATTEMPTS = 3


#: The longest a request may take to reach the server once sent (the S3 client's connect and read
#: timeouts, 5 + 60 s): a delete a pass sent before its deadline lands before its lease looks dead.
REQUEST_TIMEOUT = 65.0


def _margin(seconds: float) -> float:
    """Slack for clocks that run at slightly different rates."""
    return seconds * 0.05 + 5.0


def _dead_after(cfg: "StoreConfig") -> float:
    """Server seconds after its last renewal when a lease is dead, and its pass has stopped deleting."""
    return cfg.lease + _margin(cfg.lease) + REQUEST_TIMEOUT


class StoreConfig(NamedTuple):
    dedup: bool
    window: float = DEFAULT_WINDOW
    lease: float = DEFAULT_LEASE

    def to_bytes(self) -> bytes:
        return json.dumps({"dedup": "store" if self.dedup else "job", "window": self.window, "lease": self.lease},
                          sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "StoreConfig":
        try:
            d = json.loads(blob.decode())
            dedup = {"store": True, "job": False}.get(d["dedup"])
            if dedup is None:
                raise ValueError("dedup is %r" % (d["dedup"],))
            cfg = cls(dedup, float(d.get("window", DEFAULT_WINDOW)), float(d.get("lease", DEFAULT_LEASE)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError("the store's %s is malformed (%s)" % (STORE_CONFIG, exc)) from None
        if cfg.window <= 0 or cfg.lease <= 0:
            raise IntegrityError("the store's %s is inconsistent (window %g s, lease %g s)"
                                 % (STORE_CONFIG, cfg.window, cfg.lease))
        return cfg


PER_JOB = StoreConfig(False)


def _read_config(store: Backend) -> Optional[StoreConfig]:
    """The store's ``store.json``, or None when it has none."""
    try:
        return StoreConfig.from_bytes(store.get(STORE_CONFIG))
    except ObjectNotFound:
        return None


def store_config(store: Backend, create: Optional[StoreConfig] = None) -> StoreConfig:
    """The store's mode, read once per backend object.  A URL with ``?dedup=store`` creates
    ``store.json`` in an empty store (``create`` gives its window and lease, for tests and
    ``persistjob store init``); in a store that already holds jobs it is refused (78)."""
    cached = getattr(store, "_persistjob_config", None)
    if cached is not None:
        return cached
    cfg = _read_config(store)
    if cfg is None:
        cfg = PER_JOB
        if store.dedup == "store" or create is not None:
            cfg = _create(store, create or StoreConfig(True))
    if store.dedup == "job" and cfg.dedup:
        raise ConfigError("the store keeps chunks once for all its jobs (its %s says dedup=store); ?dedup=job cannot "
                          "write to it" % STORE_CONFIG)
    store._persistjob_config = cfg  # type: ignore[attr-defined]
    return cfg


def peek_config(store: Backend) -> StoreConfig:
    """The store's mode as it is, for a reader that must not change it (``status``): never creates
    ``store.json``, whatever the URL says."""
    return _read_config(store) or PER_JOB


def _create(store: Backend, cfg: StoreConfig) -> StoreConfig:
    first = next(iter(store.list("")), None)
    if first is not None:
        raise ConfigError("?dedup=store is chosen when a store is new; this one already holds jobs that keep their "
                          "own chunks (found %s)" % first.key)
    try:
        store.put_if_absent(STORE_CONFIG, cfg.to_bytes())
    except ObjectExists:  # another first writer: its choice stands
        return StoreConfig.from_bytes(store.get(STORE_CONFIG))
    return cfg


def register(store: Backend, keys: Layout, job_id: str) -> None:
    """Put the job on gc's list (before it uploads anything); a job already on it stays."""
    try:
        store.put_if_absent(keys.registration, job_id.encode("utf-8"))
    except ObjectExists:
        pass


# ---------------------------------------------------------------- the gc lease


class Lease(NamedTuple):
    seq: int
    key: str
    mtime: float  # server time of its creation


def _leases(store: Backend) -> List[Lease]:
    out = []
    for o in store.list(GC_LEASE + "."):
        tail = o.key[len(GC_LEASE) + 1:]
        if tail.isdigit():
            out.append(Lease(int(tail), o.key, o.mtime))
    return sorted(out)


def _lease_key(seq: int) -> str:
    return "%s.%012d" % (GC_LEASE, seq)


def _newest_live(leases: List[Lease], cfg: StoreConfig, server_now: float) -> Optional[Lease]:
    """The newest of ``leases`` when it is still live at ``server_now`` (a time read off the store's clock)."""
    if leases and server_now - leases[-1].mtime < _dead_after(cfg):
        return leases[-1]
    return None


def live_lease(store: Backend, cfg: StoreConfig, server_now: float) -> Optional[Lease]:
    """The store's newest lease when it is still live at ``server_now``."""
    return _newest_live(_leases(store), cfg, server_now)


def _mtime(store: Backend, key: str) -> float:
    for o in store.list(key):
        if o.key == key:
            return o.mtime
    raise ObjectNotFound("%s vanished" % key)


def server_now(store: Backend) -> float:
    """The store's clock: the mtime of an object written now (and deleted again)."""
    key = "%s-clock-%s" % (GC_LEASE, uuid.uuid4().hex)
    store.put(key, b"now")
    try:
        return _mtime(store, key)
    finally:
        store.delete(key)


class GcBusy(StorageUnavailable):
    """a store gc pass is running"""


class PassLease:
    """The lease of one gc pass (a context manager): taken at entry, renewed by :meth:`renew`,
    released at exit.  The pass may delete only while :meth:`left` is positive: until one lease
    time after the start of its last renewal, by its own monotonic clock."""

    def __init__(self, store: Backend, cfg: StoreConfig, mono: Callable[[], float] = time.monotonic) -> None:
        self.store, self.cfg, self.mono = store, cfg, mono
        self.lease: Optional[Lease] = None
        self.deadline = 0.0
        self.renewed = 0.0
        self.body = json.dumps({"nonce": uuid.uuid4().hex}).encode()

    def __enter__(self) -> "PassLease":
        leases = _leases(self.store)
        now = server_now(self.store)
        held = _newest_live(leases, self.cfg, now)
        if held is not None:
            raise GcBusy("another store gc pass holds the store (its lease was renewed %.0f s ago)" % (now - held.mtime))
        seq = leases[-1].seq + 1 if leases else 1
        started = self.mono()
        try:
            self.store.put_if_absent(_lease_key(seq), self.body)
        except ObjectExists:
            raise GcBusy("another store gc pass took the store at the same moment") from None
        self.deadline = started + self.cfg.lease
        self.renewed = started
        self.lease = Lease(seq, _lease_key(seq), _mtime(self.store, _lease_key(seq)))
        return self

    def left(self) -> float:
        """Seconds this pass may still delete."""
        return self.deadline - self.mono()

    def renew(self) -> None:
        """Re-write the lease when a quarter of its time has gone (commits see its new mtime).  A renewal
        that completes after the deadline has passed means the pass was stalled and may have been taken
        over: it stops (GcBusy)."""
        assert self.lease is not None
        if self.mono() - self.renewed < self.cfg.lease / 4:
            return
        started = self.mono()
        self.store.put(self.lease.key, self.body)
        if self.left() <= 0:
            raise GcBusy("this gc pass was stalled longer than its lease (%.0f s); stopping" % self.cfg.lease)
        self.deadline, self.renewed = started + self.cfg.lease, started

    def __exit__(self, *exc: object) -> None:
        if self.lease is None:
            return
        # Dead passes' leases (older numbers) go too: this pass outlived them.
        self.store.delete_many([x.key for x in _leases(self.store) if x.seq <= self.lease.seq])


# ---------------------------------------------------------------- a commit's side


def confirm(store: Backend, cfg: StoreConfig, manifest_key: str, digests: Iterable[str], *,
            workers: int = 8, sleep: Callable[[float], None] = time.sleep, mono: Callable[[], float] = time.monotonic,
            wait: Optional[float] = None, cancel: Callable[[], bool] = lambda: False) -> float:
    """Wait until no gc pass holds a live lease, then check that every chunk in ``digests`` is present.

    Returns the monotonic time at which the checks started: the caller must publish before
    that + W/2.  A chunk found missing is an IntegrityError naming it (``missing`` attribute): the
    caller forgets it, so that the next commit uploads it again.  A pass that does not end within
    ``wait`` seconds: GcBusy (retryable; the commit is not published this time).
    """
    wait = COMMIT_WAIT if wait is None else wait
    put_at = mono()
    ref = _mtime(store, manifest_key)  # the server's clock at (or after) put_at
    waited_from = mono()
    while True:
        start = mono()
        lease = live_lease(store, cfg, ref + (start - put_at))
        if lease is None:
            break
        if start - waited_from >= wait or cancel():
            raise GcBusy("a store gc pass is running (lease %d); the commit is not published this time" % lease.seq)
        sleep(1.0)
    wanted = sorted(set(digests))
    if wanted:
        with ThreadPoolExecutor(min(workers, len(wanted))) as pool:
            present = list(pool.map(lambda d: store.exists(Layout.shared_chunk(d)), wanted))
        missing = [d for d, ok in zip(wanted, present) if not ok]
        if missing:
            exc = IntegrityError("%d chunk(s) this commit relies on are gone from the store (%s...): a store gc removed "
                                 "them; not published, the next commit uploads them again" % (len(missing), missing[0][:12]))
            exc.missing = missing  # type: ignore[attr-defined]
            raise exc
    return start


def await_passes(store: Backend, wait: Optional[float] = None, sleep: Callable[[float], None] = time.sleep,
                 mono: Callable[[], float] = time.monotonic, cancel: Callable[[], bool] = lambda: False) -> None:
    """Before a snapshot: wait (at most ``wait`` seconds, half the commit's wait by default) while a gc
    pass's lease exists, so that the uploads do not wait through a pass for their manifest (a pass
    spares only uploads younger than its grace).  Only an optimisation: :func:`confirm` decides."""
    end = mono() + (COMMIT_WAIT / 2 if wait is None else wait)
    while _leases(store) and mono() < end and not cancel():
        sleep(1.0)


@contextlib.contextmanager
def no_retries_after(store: Backend, when: Optional[float]) -> Iterator[None]:
    """A retrying backend starts no attempt after ``when`` (monotonic) in this block: a shared-store
    commit must publish within W/2 of its checks (a request already sent is answered or given up
    within the client's read timeout, 60 s, well inside the other W/2)."""
    old = getattr(store, "deadline", None)
    if when is None or not hasattr(store, "deadline"):
        yield
        return
    store.deadline = when if old is None else min(old, when)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        store.deadline = old  # type: ignore[attr-defined]


def in_window(cfg: StoreConfig, started: float, mono: Callable[[], float] = time.monotonic) -> bool:
    return mono() - started < cfg.window / 2


# ---------------------------------------------------------------- the gc pass


def store_gc(store: Backend, grace: float, live_chunks: Callable[[str], Set[str]], *,
             sleep: Callable[[float], None] = time.sleep, mono: Callable[[], float] = time.monotonic,
             say: Callable[[str], None] = lambda s: None) -> Dict[str, int]:
    """One store-wide gc pass: delete shared chunks that no registered job's live manifests
    reference and that are older than the lease minus ``grace``.  ``live_chunks(job_id)`` gives
    one job's referenced chunks (the repository reads its log head and manifests)."""
    cfg = store_config(store)
    if not cfg.dedup:
        raise ConfigError("store gc is for stores that keep chunks once for all jobs (?dedup=store); this one keeps "
                          "them per job: use 'persistjob checkpoint gc'")
    with PassLease(store, cfg, mono) as lease:
        assert lease.lease is not None
        say("gc: lease %d taken; waiting %.0f s for commits that started before it to publish" % (lease.lease.seq, cfg.window))
        until = mono() + cfg.window + _margin(cfg.window)
        while mono() < until:
            lease.renew()
            sleep(min(5.0, until - mono()))
        referenced: Set[str] = set()
        jobs = 0
        for o in store.list(JOBS_ROOT):
            try:
                job_id = store.get(o.key).decode("utf-8")
            except ObjectNotFound:  # purged meanwhile
                continue
            referenced |= live_chunks(job_id)
            jobs += 1
            lease.renew()
        cutoff = lease.lease.mtime - grace
        doomed: List[Tuple[str, int]] = []
        kept = 0
        for o in store.list(SHARED_CHUNK_ROOT):
            lease.renew()
            if Layout.name(o.key) in referenced:
                kept += 1
            elif o.mtime < cutoff:
                doomed.append((o.key, o.size))
        for i in range(0, len(doomed), 500):
            lease.renew()  # stops the pass (GcBusy) if it was stalled past its deadline
            store.delete_many([k for k, _ in doomed[i:i + 500]])
        return {"jobs": jobs, "referenced": len(referenced), "kept": kept, "deleted": len(doomed),
                "bytes": sum(n for _, n in doomed)}
