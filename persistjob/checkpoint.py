"""A checkpoint directory as chunks and entries: snapshot, upload, restore.

:class:`Checkpointer` reads the payload's checkpoint directory into :class:`~persistjob.codec.Entry`
lists and content-addressed chunks (fixed-size per file, default 1 MiB: boundaries survive in-place
edits and appends, and it runs at the speed of sha256; docs/design.md says why not content-defined
chunking), uploads only the chunks the store does not have, and materializes a verified entry list
back into the directory.  It knows no storage keys: chunks go through a :class:`ChunkStore`, which
the repository layer (``persistjob.repo``) provides.
"""

import collections
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Callable, Deque, Dict, Iterable, Iterator, List, NamedTuple, Optional, Set, Tuple, Union

from . import constants as C
from .codec import SAMPLE_BYTES, Entry, decode_chunk, encode_chunk, raw_chunk
from .errors import IntegrityError, ObjectNotFound

log = logging.getLogger(__name__)


class ChunkStore:
    """Where chunks live, by digest (the repository layer implements it over its key layout)."""

    def put(self, digest: str, blob: bytes) -> None:
        raise NotImplementedError

    def skip(self, digest: str) -> bool:
        """True when a chunk need not be sent at all (another job of a shared store has stored it);
        asked before it is compressed."""
        return False

    def get(self, digest: str) -> bytes:
        """The stored blob; :class:`~persistjob.errors.ObjectNotFound` when missing."""
        raise NotImplementedError


class Pace:
    """Whether compressing a chunk pays on this store: it does unless sending the bytes it would save
    takes less than half the time compressing takes (``MARGIN``: compressed chunks also cost less to
    keep and to restore, and load a shared store less, so a close call compresses).

    The compression rate comes from the 16 KiB sample every chunk is tried with (bytes per CPU second
    on samples that compress, times the cores the workers can use), so it is known from the first
    chunk on.  The store's upload rate (bytes per second of wall time with any upload in flight) comes
    from this checkpointer's own uploads; until one has landed, the first compressible chunk of a
    commit that uploads as it reads goes raw and alone (the probe), and the other workers wait for it
    before deciding (up to ``PROBE_WAIT``: a chunk's upload on a slow link).  Where chunks are only
    spooled (nothing is sent while they are encoded) and nothing was sent before, and for any store
    slower than compressing, a chunk is compressed whenever its sample saves more than 10%.  On a store
    faster than compressing could ever pay (a saving of 100%; the rate of any sample while none has
    compressed), chunks go raw without a sample, but for one in ``RESAMPLE`` (the rates and the data
    may change)."""

    PROBE_WAIT = 10.0
    RESAMPLE = 16
    MARGIN = 2.0

    def __init__(self, workers: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.cores = max(1, min(workers, os.cpu_count() or 1))
        self.sent = 0
        self.send_wall = 0.0
        self._inflight = 0
        self._since = 0.0
        self.packed = 0  # sample bytes that compressed, and their CPU time
        self.pack_cpu = 0.0
        self.sampled = 0  # every sample (incompressible data compresses slower)
        self.sample_cpu = 0.0
        self._probe: Optional[threading.Event] = None  # set when the first upload has ended
        self._unsampled = 0

    def worth(self, saving: float, seconds: float = 0.0, live: bool = False) -> bool:
        """``live``: the chunk is sent as soon as it is encoded (no spool)."""
        with self._lock:
            self.sampled += SAMPLE_BYTES
            self.sample_cpu += seconds
            if saving <= 0.1:
                return False
            self.packed += SAMPLE_BYTES
            self.pack_cpu += seconds
            probe = self._probe
            if self.sent == 0 and live and probe is None:
                self._probe = threading.Event()
                return False  # the probe: sent raw, it measures the store
        if self.sent == 0 and live and probe is not None:
            probe.wait(self.PROBE_WAIT)
        with self._lock:
            rates = self._rates()
        return rates is None or self.MARGIN * saving * rates[1] > rates[0]

    def _rates(self) -> Optional[Tuple[float, float]]:
        """(upload, compression) in bytes per second, once both are known (call with the lock held).
        Compression: on samples that compressed, else on any (incompressible data is slower)."""
        wall = self.send_wall + (self.clock() - self._since if self._inflight else 0.0)
        packed, cpu = (self.packed, self.pack_cpu) if self.pack_cpu > 0 else (self.sampled, self.sample_cpu)
        if self.sent == 0 or wall <= 0 or cpu <= 0:
            return None
        return self.sent / wall, packed / cpu * self.cores

    def encode(self, data: bytes, codec: str, live: bool = False) -> bytes:
        with self._lock:
            rates = self._rates()
            pointless = rates is not None and rates[0] > self.MARGIN * rates[1]  # even a 100% saving would not pay
            if pointless:
                self._unsampled = (self._unsampled + 1) % self.RESAMPLE
                pointless = self._unsampled != 0
        if pointless:
            return raw_chunk(data)
        return encode_chunk(data, codec, lambda saving, seconds: self.worth(saving, seconds, live))

    def abandon(self) -> None:
        """A chunk will not be sent after all: nobody waits for a probe that may have been it."""
        probe = self._probe
        if probe is not None:
            probe.set()

    def send(self, put: Callable[[], None], n: int) -> None:
        with self._lock:
            if self._inflight == 0:
                self._since = self.clock()
            self._inflight += 1
        ok = False
        try:
            put()
            ok = True
        finally:
            with self._lock:
                self._inflight -= 1
                if ok:
                    self.sent += n
                if self._inflight == 0:
                    self.send_wall += self.clock() - self._since
                probe = self._probe
            if probe is not None:
                probe.set()  # landed or failed: nobody waits longer than one upload


class Stats:
    """Counters of one commit or restore (thread-safe adds)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.files = 0
        self.bytes = 0  # logical bytes of the state
        self.read = 0  # bytes read from disk while snapshotting
        self.chunks_new = 0
        self.transferred = 0  # bytes sent or received
        self.seconds = 0.0
        self.frozen = 0.0

    def add(self, **kw: float) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


class _StatKey(NamedTuple):
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int


def _skip_name(rel: str) -> bool:
    return rel == C.MARKER_NAME


class Snapshot:
    """A consistent view of the checkpoint directory, ready to upload."""

    def __init__(self, entries: List[Entry], spool: Optional[str], stats: Stats, new_chunks: List[str]) -> None:
        self.entries = entries
        self.spool = spool
        self.stats = stats
        self.new_chunks = new_chunks


def fixed_chunks(f: BinaryIO, size: int) -> Iterator[bytes]:
    while True:
        data = f.read(size)
        if not data:
            return
        yield data


PAGE = 4096


def page_chunks(f: BinaryIO, size: int) -> Iterator[bytes]:
    """Chunks of a file of whole memory pages, about ``size`` on average, at least a quarter and at most
    four times it, cut before a page whose first 256 bytes' CRC-32 is 0 modulo the pages a chunk has on
    average past its minimum.

    CRIU writes a process's present pages in address order, so a mapping that comes or goes shifts all
    pages after it; fixed boundaries then dedup nothing after the shift, these find the same cuts again
    (benchmarks/criu_chunking.py: 97% against 22% new bytes per dump of a payload that allocates and
    frees).  Only page boundaries are candidates, so a cut costs one CRC of 256 bytes per page."""
    avg = max(1, size // PAGE)
    lo, hi = max(1, avg // 4) * PAGE, avg * 4 * PAGE
    mod = max(1, avg - lo // PAGE)  # a cut is looked for only past lo: the mean chunk is then about ``size``
    buf = b""
    eof = False
    while buf or not eof:
        if not eof and len(buf) < hi:
            more = f.read(hi - len(buf))
            eof = not more
            buf += more
            continue
        cut = len(buf) if len(buf) <= lo else min(hi, len(buf))
        for at in range(lo, min(hi, len(buf)), PAGE):
            if zlib.crc32(buf[at:at + 256]) % mod == 0:
                cut = at
                break
        yield buf[:cut]
        buf = buf[cut:]


# Size: one class, because snapshot and restore share the stat cache and the known-chunk set (a restore
# primes both, so that the next snapshot reads and uploads only what the payload changed).
class Checkpointer:
    """Snapshots a directory and uploads what the store does not have.

    Keeps an in-memory cache of file stat keys -> chunk lists, so that files
    unchanged since the last snapshot or restore are not read again.  A file
    modified within ``racy`` seconds of being read is not trusted next time
    (its mtime may not have moved: the "racy git" problem).
    """

    def __init__(self, chunks: ChunkStore, root: str, *, chunk_size: int = C.DEFAULT_CHUNK_SIZE,
                 workers: int = 8, clock: Callable[[], float] = time.time, cancel: Callable[[], bool] = lambda: False,
                 racy: float = 2.0, codec: str = C.DEFAULT_CODEC) -> None:
        self.chunks = chunks
        self.root = os.path.abspath(root)
        self.chunk_size = chunk_size
        self.workers = workers
        self.clock = clock
        self.cancel = cancel
        self.racy = racy
        self.codec = codec
        self.cache: Dict[str, Tuple[_StatKey, Tuple[Tuple[str, int], ...]]] = {}
        self.known: Set[str] = set()
        self.pace = Pace(workers)
        self._pool: Optional[ThreadPoolExecutor] = None
        #: Files made of whole memory pages (CRIU's page images): cut at content-defined page boundaries.
        self.page_files: Callable[[str], bool] = lambda rel: False

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="persistjob-io")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- snapshot
    def snapshot(self, spool_parent: Optional[str] = None) -> Snapshot:
        """Read the directory.

        With ``spool_parent`` new chunks are encoded into a spool directory
        (so the payload may run on while they upload); without, they are
        uploaded at once.
        """
        stats = Stats()
        t0 = time.monotonic()
        spool = tempfile.mkdtemp(prefix=".persistjob-spool-", dir=spool_parent) if spool_parent else None
        scan_time = self.clock()
        new_chunks: List[str] = []
        new_lock = threading.Lock()
        inflight: List[Future] = []
        sem = threading.BoundedSemaphore(self.workers * 2)

        def process(data: bytes) -> str:
            try:
                digest = hashlib.sha256(data).hexdigest()
                with new_lock:
                    if digest in self.known or digest in pending:
                        return digest
                    pending.add(digest)
                if self.chunks.skip(digest):
                    return digest
                blob = self.pace.encode(data, self.codec, live=spool is None)
                if spool is not None:
                    with open(os.path.join(spool, digest), "wb") as f:
                        f.write(blob)
                else:
                    if self.cancel():
                        self.pace.abandon()
                        raise IntegrityError("checkpoint cancelled")
                    self.pace.send(lambda: self.chunks.put(digest, blob), len(blob))
                    stats.add(transferred=len(blob))
                with new_lock:
                    new_chunks.append(digest)
                stats.add(chunks_new=1)
                return digest
            finally:
                sem.release()

        pending: Set[str] = set()
        entries: List[Entry] = []
        file_jobs: List[Tuple[int, str, os.stat_result, List[Future]]] = []
        new_cache: Dict[str, Tuple[_StatKey, Tuple[Tuple[str, int], ...]]] = {}
        try:
            for rel, st in self._walk():
                if stat.S_ISDIR(st.st_mode):
                    entries.append(Entry(rel, "d", st.st_mode & 0o1777, 0, st.st_mtime_ns))
                elif stat.S_ISLNK(st.st_mode):
                    entries.append(Entry(rel, "l", 0o777, 0, st.st_mtime_ns, target=os.readlink(self._abs(rel))))
                else:
                    key = _StatKey(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                    cached = self.cache.get(rel)
                    stats.add(files=1, bytes=st.st_size)
                    if cached is not None and cached[0] == key:
                        entries.append(Entry(rel, "f", st.st_mode & 0o1777, st.st_size, st.st_mtime_ns, cached[1]))
                        new_cache[rel] = cached
                        continue
                    futures: List[Future] = []
                    entries.append(Entry(rel, "f", st.st_mode & 0o1777, st.st_size, st.st_mtime_ns))
                    file_jobs.append((len(entries) - 1, rel, st, futures))
                    with open(self._abs(rel), "rb", buffering=0) as f:
                        pieces = page_chunks(f, self.chunk_size) if self.page_files(rel) else fixed_chunks(f, self.chunk_size)
                        for data in pieces:
                            stats.add(read=len(data))
                            sem.acquire()
                            fut = self.pool().submit(process, data)
                            fut.size = len(data)  # type: ignore[attr-defined]
                            futures.append(fut)
                            inflight.append(fut)
            for fut in inflight:
                fut.result()
        except BaseException:
            for fut in inflight:
                fut.cancel()
            if spool:
                shutil.rmtree(spool, ignore_errors=True)
            raise
        for idx, rel, st, futures in file_jobs:
            chunks = tuple((f.result(), f.size) for f in futures)  # type: ignore[attr-defined]
            entries[idx] = entries[idx]._replace(chunks=chunks, size=sum(n for _, n in chunks))
            key = _StatKey(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
            if scan_time - st.st_mtime_ns / 1e9 > self.racy and scan_time - st.st_ctime_ns / 1e9 > self.racy:
                new_cache[rel] = (key, chunks)
        self.cache = new_cache
        if spool is None:
            self.known.update(new_chunks)
        stats.add(seconds=time.monotonic() - t0)
        return Snapshot(entries, spool, stats, new_chunks)

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def _walk(self) -> Iterator[Tuple[str, os.stat_result]]:
        stack = [""]
        while stack:
            reldir = stack.pop()
            absdir = self._abs(reldir) if reldir else self.root
            try:
                names = sorted(os.listdir(absdir))
            except OSError as exc:
                log.warning("snapshot: cannot list %s: %s", reldir or ".", exc.strerror)
                continue
            subdirs = []
            for name in names:
                rel = reldir + "/" + name if reldir else name
                if _skip_name(rel):
                    continue
                try:
                    st = os.lstat(os.path.join(absdir, name))
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    yield rel, st
                    subdirs.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    yield rel, st
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(os.path.join(absdir, name))
                    resolved = os.path.normpath(os.path.join(reldir, target))
                    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                        log.warning("snapshot: skipping symlink %s -> %s (points outside the checkpoint directory)", rel, target)
                        continue
                    yield rel, st
                else:
                    log.warning("snapshot: skipping %s (not a regular file, directory or symlink)", rel)
            stack.extend(reversed(subdirs))

    # -- upload
    def upload(self, snap: Snapshot) -> None:
        """Upload the spooled chunks of a snapshot (the repository then publishes its manifest)."""
        t0 = time.monotonic()
        spool = snap.spool
        if spool is not None:
            def send(digest: str) -> None:
                if self.cancel():
                    raise IntegrityError("checkpoint cancelled")
                with open(os.path.join(spool, digest), "rb") as f:
                    blob = f.read()
                self.pace.send(lambda: self.chunks.put(digest, blob), len(blob))
                snap.stats.add(transferred=len(blob))

            try:
                for fut in [self.pool().submit(send, d) for d in snap.new_chunks]:
                    fut.result()
            finally:
                shutil.rmtree(spool, ignore_errors=True)
            self.known.update(snap.new_chunks)
        snap.stats.add(seconds=time.monotonic() - t0)

    def forget(self, digests: Iterable[str]) -> None:
        """The store lost these chunks: the next snapshot reads the files that hold them and sends them again."""
        gone = set(digests)
        if gone:
            self.known -= gone
            self.cache = {rel: v for rel, v in self.cache.items() if not any(h in gone for h, _ in v[1])}

    # -- restore
    def restore(self, entries: List[Entry], stats: Optional[Stats] = None) -> Stats:
        """Replace the directory's content with these (validated) entries, every chunk verified."""
        stats = stats or Stats()
        t0 = time.monotonic()
        parent = os.path.dirname(self.root)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".persistjob-restore-", dir=parent)
        try:
            cache = self._materialize(tmp, entries, stats)
            self._swap(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Rebuild the stat cache against the restored files, so that the next
        # snapshot reads only what the payload changes.
        self.cache = {}
        for rel, chunks in cache.items():
            try:
                st = os.lstat(self._abs(rel))
            except OSError:
                continue
            self.cache[rel] = (_StatKey(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns), chunks)
        self.known.update(h for chunks in cache.values() for h, _ in chunks)
        stats.add(seconds=time.monotonic() - t0)
        return stats

    def _fetch(self, digest: str, size: int, stats: Stats) -> "Union[bytes, memoryview]":
        try:
            blob = self.chunks.get(digest)
        except ObjectNotFound:
            raise IntegrityError("chunk %s is missing" % digest[:12]) from None
        stats.add(transferred=len(blob))
        return decode_chunk(blob, digest, size)

    def _materialize(self, dest: str, entries: List[Entry], stats: Stats) -> Dict[str, Tuple[Tuple[str, int], ...]]:
        jobs: List[Tuple[int, int, str, int]] = []  # (fd index, offset, digest, size)
        fds: List[int] = []
        dir_times: List[Tuple[str, int, int]] = []
        out: Dict[str, Tuple[Tuple[str, int], ...]] = {}
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            for e in entries:
                path = os.path.join(dest, *e.path.split("/"))
                if e.type == "d":
                    os.mkdir(path, 0o700)
                    dir_times.append((path, e.mode, e.mtime_ns))
                elif e.type == "l":
                    os.symlink(e.target, path)
                else:
                    fd = os.open(path, flags, 0o600)
                    fds.append(fd)
                    if e.size:
                        os.ftruncate(fd, e.size)
                    off = 0
                    for digest, n in e.chunks:
                        jobs.append((len(fds) - 1, off, digest, n))
                        off += n
                    out[e.path] = e.chunks
                    stats.add(files=1, bytes=e.size)
            window = max(2, self.workers * 2)
            pool = self.pool()
            queue: Deque[Tuple[Tuple[int, int, str, int], Future]] = collections.deque()
            try:
                for job in jobs:
                    queue.append((job, pool.submit(self._fetch, job[2], job[3], stats)))
                    if len(queue) > window:
                        self._write(fds, *queue.popleft())
                while queue:
                    self._write(fds, *queue.popleft())
            finally:
                for _job, fut in queue:
                    fut.cancel()
        finally:
            for fd in fds:
                os.close(fd)
        for e in entries:
            if e.type == "f":
                path = os.path.join(dest, *e.path.split("/"))
                os.chmod(path, e.mode)
                os.utime(path, ns=(e.mtime_ns, e.mtime_ns))
        for path, mode, mtime_ns in reversed(dir_times):
            os.chmod(path, mode | 0o700)
            os.utime(path, ns=(mtime_ns, mtime_ns))
        return out

    @staticmethod
    def _write(fds: List[int], job: Tuple[int, int, str, int], fut: Future) -> None:
        fdi, off, _digest, _n = job
        data = fut.result()
        view = memoryview(data)
        while view:
            n = os.pwrite(fds[fdi], view, off)
            view = view[n:]
            off += n

    def _swap(self, tmp: str) -> None:
        root = self.root
        if not os.path.lexists(root):
            os.rename(tmp, root)
            return
        trash = tempfile.mkdtemp(prefix=".persistjob-old-", dir=os.path.dirname(root))
        try:
            os.rename(root, os.path.join(trash, "old"))
            os.rename(tmp, root)
        except OSError:
            # root is a mount point or otherwise cannot move: empty it and
            # move the restored entries in.
            for name in os.listdir(root):
                p = os.path.join(root, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
            for name in os.listdir(tmp):
                shutil.move(os.path.join(tmp, name), os.path.join(root, name))
            os.rmdir(tmp)
        shutil.rmtree(trash, ignore_errors=True)
