"""Checkpoint format: commit log with fencing, manifests, chunks, runs, GC.

Layout under ``<store>/<sha256(job id)>/``::

    log/000000000001     append-only records, written create-if-absent
    head                 best-effort hint of a recent log sequence number
    manifests/<sha256>   zstd JSON: files, modes, sizes, mtimes, chunk hashes
    chunks/<sha256>      1 byte codec + data (0 raw, 1 zstd); name = hash of raw
    runs/<run>-<seq>     per-run accounting (JSON)

A log record is one of ``claim`` (a run takes the job), ``commit`` (a
generation is published), ``end`` (a run ended in order).  Every record
carries the job's current state (run number, generation, manifest, retained
generations, crash streak), so the newest record alone says everything the
next run needs.  Two writers can never both create record N+1: the loser is
*fenced* and stops.  Log records are never deleted.

Chunking is fixed-size per file (default 1 MiB): chunk boundaries survive
in-place edits and appends, and it runs at the speed of sha256 (docs/
design.md says why not content-defined chunking).
"""

import collections
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, NamedTuple, Optional, Set, Tuple

from . import constants as C
from .errors import ConfigError, Fenced, IntegrityError, ObjectExists, ObjectNotFound, UnsafeManifest
from .storage import Backend

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_CODEC_RAW = b"\x00"
_CODEC_ZSTD = b"\x01"
_MAX_CHUNK = 64 << 20
_HEX = set("0123456789abcdef")
HINT_EVERY = 64


def job_key(job_id: str) -> str:
    """Storage key of a job: hex sha256 of its ID."""
    return hashlib.sha256(job_id.encode("utf-8")).hexdigest()


def _is_hash(s: Any) -> bool:
    return isinstance(s, str) and len(s) == 64 and set(s) <= _HEX


# ------------------------------------------------------------------ codecs

_tls = threading.local()


def _compressor() -> Any:
    c = getattr(_tls, "cctx", None)
    if c is None:
        import zstandard

        c = _tls.cctx = zstandard.ZstdCompressor(level=1)
    return c


def _decompressor() -> Any:
    d = getattr(_tls, "dctx", None)
    if d is None:
        import zstandard

        d = _tls.dctx = zstandard.ZstdDecompressor()
    return d


def encode_chunk(data: bytes) -> bytes:
    """Compress when it pays (>= 3% smaller), else store raw."""
    packed = _compressor().compress(data)
    if len(packed) < len(data) * 0.97:
        return _CODEC_ZSTD + packed
    return _CODEC_RAW + bytes(data)


def decode_chunk(blob: bytes, digest: str, size: int) -> bytes:
    """Decode a stored chunk and verify it against its name."""
    if not blob:
        raise IntegrityError("chunk %s is empty" % digest[:12])
    codec, body = blob[:1], blob[1:]
    try:
        if codec == _CODEC_ZSTD:
            data = _decompressor().decompress(body, max_output_size=size)
        elif codec == _CODEC_RAW:
            data = body
        else:
            raise IntegrityError("chunk %s has unknown codec" % digest[:12])
    except IntegrityError:
        raise
    except Exception as exc:
        raise IntegrityError("chunk %s does not decompress: %s" % (digest[:12], exc)) from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise IntegrityError("chunk %s fails its hash" % digest[:12])
    return data


# ----------------------------------------------------------------- records


class Record(NamedTuple):
    seq: int
    kind: str
    run: int
    generation: int
    manifest: Optional[str]
    retained: Tuple[Tuple[int, str], ...]
    crash_streak: int
    data: Dict[str, Any]

    def to_bytes(self) -> bytes:
        body = dict(self.data)
        body.update(v=FORMAT_VERSION, seq=self.seq, kind=self.kind, run=self.run, generation=self.generation,
                    manifest=self.manifest, retained=[list(r) for r in self.retained], crash_streak=self.crash_streak)
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes, seq: int) -> "Record":
        try:
            d = json.loads(blob.decode())
            version = int(d.pop("v", 1))
            rec = cls(int(d.pop("seq")), str(d.pop("kind")), int(d.pop("run")), int(d.pop("generation")),
                      d.pop("manifest"), tuple((int(g), str(m)) for g, m in d.pop("retained")),
                      int(d.pop("crash_streak", 0)), d)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError("log record %d is malformed: %s" % (seq, exc)) from None
        if version > FORMAT_VERSION:
            raise ConfigError("log record %d has format %d, newer than this persistjob understands (%d): upgrade "
                              "persistjob on this worker" % (seq, version, FORMAT_VERSION))
        if rec.seq != seq or rec.kind not in ("claim", "commit", "end"):
            raise IntegrityError("log record %d is inconsistent" % seq)
        if rec.manifest is not None and not _is_hash(rec.manifest):
            raise IntegrityError("log record %d names a bad manifest id" % seq)
        return rec


EMPTY = Record(0, "none", 0, 0, None, (), 0, {})


class JobLog:
    """The append-only, fenced log of one job."""

    def __init__(self, backend: Backend, job_id: str, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.job_id = job_id
        self.key = job_key(job_id)
        self.prefix = self.key + "/"
        self.clock = clock

    def log_key(self, seq: int) -> str:
        return "%slog/%012d" % (self.prefix, seq)

    def _seq_of(self, key: str) -> Optional[int]:
        name = key.rsplit("/", 1)[-1]
        return int(name) if name.isdigit() else None

    def _read_hint(self) -> int:
        try:
            return max(0, int(self.backend.get(self.prefix + "head").decode().strip()))
        except (ObjectNotFound, ValueError, UnicodeDecodeError):
            return 0

    def get(self, seq: int) -> Record:
        return Record.from_bytes(self.backend.get(self.log_key(seq)), seq)

    def head(self) -> Record:
        """The newest readable record (EMPTY when the job has no log yet)."""
        hint = self._read_hint()
        start = self.log_key(hint - 1) if hint > 1 else None
        seqs = [s for s in (self._seq_of(o.key) for o in self.backend.list(self.prefix + "log/", start)) if s]
        if not seqs and start is not None:  # a hint from the future: ignore it
            seqs = [s for s in (self._seq_of(o.key) for o in self.backend.list(self.prefix + "log/")) if s]
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
        rec = Record(**fields)
        try:
            self.backend.put_if_absent(self.log_key(rec.seq), rec.to_bytes())
        except ObjectExists:
            raise Fenced("log record %d was written by another instance of job %s" % (rec.seq, self.job_id)) from None
        if rec.seq % HINT_EVERY == 0:
            try:
                self.backend.put(self.prefix + "head", str(rec.seq).encode())
            except Exception as exc:  # the hint is only a hint
                log.debug("could not update log hint: %s", exc)
        return rec

    def superseded(self, mine: Record) -> bool:
        """True when someone appended after our newest record."""
        return self.backend.exists(self.log_key(mine.seq + 1))

    def records(self) -> Iterator[Record]:
        for o in self.backend.list(self.prefix + "log/"):
            seq = self._seq_of(o.key)
            if seq:
                try:
                    yield self.get(seq)
                except (IntegrityError, ObjectNotFound) as exc:
                    log.warning("log: %s", exc)

    def note_fenced(self, seq: int, why: str) -> None:
        """Leave a note (outside the log) that a stale instance was refused."""
        body = {"time": self.clock(), "host": host_name(), "pid": os.getpid(), "claim_seq": seq, "why": why}
        self.backend.put("%sfenced/%d-%d" % (self.prefix, int(self.clock()), os.getpid()), json.dumps(body).encode())

    def fenced_notes(self, since: Optional[float] = None) -> List[Dict[str, Any]]:
        """The notes left by refused instances; with ``since``, only those written since then (the
        time is in the note's name, so older ones are not even read)."""
        out = []
        for o in self.backend.list(self.prefix + "fenced/"):
            stamp = o.key.rsplit("/", 1)[-1].split("-", 1)[0]
            if since is not None and stamp.isdigit() and int(stamp) < int(since):
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
        self.backend.put("%sruns/%08d-%012d" % (self.prefix, run, seq), json.dumps(info, sort_keys=True).encode())

    def runs(self) -> List[Dict[str, Any]]:
        out = []
        for o in self.backend.list(self.prefix + "runs/"):
            try:
                out.append(json.loads(self.backend.get(o.key).decode()))
            except (ObjectNotFound, ValueError, UnicodeDecodeError):
                continue
        return out


# --------------------------------------------------------------- manifests


class Entry(NamedTuple):
    path: str
    type: str  # "f" file, "d" directory, "l" symlink
    mode: int
    size: int
    mtime_ns: int
    chunks: Tuple[Tuple[str, int], ...] = ()
    target: str = ""

    def to_json(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"p": self.path, "t": self.type, "m": self.mode, "mt": self.mtime_ns}
        if self.type == "f":
            d["s"] = self.size
            d["c"] = [list(c) for c in self.chunks]
        elif self.type == "l":
            d["l"] = self.target
        return d


def encode_manifest(entries: List[Entry], meta: Dict[str, Any]) -> bytes:
    body = dict(meta, v=FORMAT_VERSION, entries=[e.to_json() for e in entries])
    return _compressor().compress(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _check_path(p: Any) -> str:
    if not isinstance(p, str) or not p or p.startswith("/") or "\x00" in p or "\\" in p:
        raise UnsafeManifest("unsafe path %r in manifest" % (p,))
    parts = p.split("/")
    if any(x in ("", ".", "..") for x in parts):
        raise UnsafeManifest("unsafe path %r in manifest" % (p,))
    return p


def decode_manifest(blob: bytes, manifest_id: str) -> Tuple[List[Entry], Dict[str, Any]]:
    """Verify, parse and validate a manifest.

    A manifest that fails its hash is an :class:`IntegrityError` (fall back);
    one that is intact but names unsafe paths or file types is an
    :class:`UnsafeManifest` (refuse: a human must look).
    """
    if hashlib.sha256(blob).hexdigest() != manifest_id:
        raise IntegrityError("manifest %s fails its hash" % manifest_id[:12])
    try:
        body = json.loads(_decompressor().decompress(blob, max_output_size=1 << 30).decode())
        raw = body.pop("entries")
    except Exception as exc:
        raise IntegrityError("manifest %s is unreadable: %s" % (manifest_id[:12], exc)) from None
    entries: List[Entry] = []
    seen: Set[str] = set()
    links: Set[str] = set()
    dirs: Set[str] = set()
    for e in raw:
        path = _check_path(e.get("p"))
        kind = e.get("t")
        if path in seen:
            raise UnsafeManifest("duplicate path %r in manifest" % path)
        parents = path.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            anc = "/".join(parents[:i])
            if anc in links:
                raise UnsafeManifest("path %r goes through symlink %r" % (path, anc))
            if anc not in dirs:
                raise UnsafeManifest("path %r comes before its directory" % path)
        seen.add(path)
        mode = int(e.get("m", 0o644)) & 0o1777
        mtime = int(e.get("mt", 0))
        if kind == "f":
            chunks = tuple((str(h), int(n)) for h, n in e.get("c", ()))
            size = int(e.get("s", -1))
            if any(not _is_hash(h) or not 0 <= n <= _MAX_CHUNK for h, n in chunks) or sum(n for _, n in chunks) != size:
                raise UnsafeManifest("bad chunk list for %r in manifest" % path)
            entries.append(Entry(path, "f", mode, size, mtime, chunks))
        elif kind == "d":
            dirs.add(path)
            entries.append(Entry(path, "d", mode, 0, mtime))
        elif kind == "l":
            target = e.get("l")
            if not isinstance(target, str) or not target or "\x00" in target or target.startswith("/"):
                raise UnsafeManifest("symlink %r points outside the checkpoint directory" % path)
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafeManifest("symlink %r points outside the checkpoint directory" % path)
            links.add(path)
            entries.append(Entry(path, "l", 0o777, 0, mtime, target=target))
        else:
            raise UnsafeManifest("file type %r of %r is not allowed (devices, fifos and sockets never are)" % (kind, path))
    return entries, body


# ---------------------------------------------------------------- snapshot


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


class Checkpointer:
    """Snapshots a directory and uploads what the store does not have.

    Keeps an in-memory cache of file stat keys -> chunk lists, so that files
    unchanged since the last snapshot or restore are not read again.  A file
    modified within ``racy`` seconds of being read is not trusted next time
    (its mtime may not have moved: the "racy git" problem).
    """

    def __init__(self, backend: Backend, prefix: str, root: str, *, chunk_size: int = C.DEFAULT_CHUNK_SIZE,
                 workers: int = 8, clock: Callable[[], float] = time.time, cancel: Callable[[], bool] = lambda: False,
                 racy: float = 2.0) -> None:
        self.backend = backend
        self.prefix = prefix
        self.root = os.path.abspath(root)
        self.chunk_size = chunk_size
        self.workers = workers
        self.clock = clock
        self.cancel = cancel
        self.racy = racy
        self.cache: Dict[str, Tuple[_StatKey, Tuple[Tuple[str, int], ...]]] = {}
        self.known: Set[str] = set()
        self._pool: Optional[ThreadPoolExecutor] = None

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="persistjob-io")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def chunk_key(self, digest: str) -> str:
        return self.prefix + "chunks/" + digest

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
                blob = encode_chunk(data)
                if spool is not None:
                    with open(os.path.join(spool, digest), "wb") as f:
                        f.write(blob)
                else:
                    if self.cancel():
                        raise IntegrityError("checkpoint cancelled")
                    self.backend.put(self.chunk_key(digest), blob)
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
                        while True:
                            data = f.read(self.chunk_size)
                            if not data:
                                break
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
    def upload(self, snap: Snapshot) -> str:
        """Upload spooled chunks and the manifest; return the manifest id."""
        t0 = time.monotonic()
        spool = snap.spool
        if spool is not None:
            def send(digest: str) -> None:
                if self.cancel():
                    raise IntegrityError("checkpoint cancelled")
                with open(os.path.join(spool, digest), "rb") as f:
                    blob = f.read()
                self.backend.put(self.chunk_key(digest), blob)
                snap.stats.add(transferred=len(blob))

            try:
                for fut in [self.pool().submit(send, d) for d in snap.new_chunks]:
                    fut.result()
            finally:
                shutil.rmtree(spool, ignore_errors=True)
            self.known.update(snap.new_chunks)
        blob = encode_manifest(snap.entries, {"created": self.clock(), "chunk_size": self.chunk_size})
        manifest_id = hashlib.sha256(blob).hexdigest()
        self.backend.put(self.prefix + "manifests/" + manifest_id, blob)
        snap.stats.add(transferred=len(blob), seconds=time.monotonic() - t0)
        return manifest_id

    # -- restore
    def restore(self, manifest_id: str, stats: Optional[Stats] = None) -> Stats:
        """Replace the directory's content with a verified generation."""
        stats = stats or Stats()
        t0 = time.monotonic()
        try:
            blob = self.backend.get(self.prefix + "manifests/" + manifest_id)
        except ObjectNotFound:
            raise IntegrityError("manifest %s is missing" % manifest_id[:12]) from None
        entries, _meta = decode_manifest(blob, manifest_id)
        stats.add(transferred=len(blob))
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

    def _fetch(self, digest: str, size: int, stats: Stats) -> bytes:
        try:
            blob = self.backend.get(self.chunk_key(digest))
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


# --------------------------------------------------------------- retention


def retained_after(new: Tuple[int, str], old: Iterable[Tuple[int, str]], keep: int,
                   drop: Iterable[str] = ()) -> Tuple[Tuple[int, str], ...]:
    """Generations kept after committing ``new``: the newest ``keep``."""
    dropped = set(drop)
    out = [new] + [r for r in old if r[1] != new[1] and r[1] not in dropped]
    return tuple(out[:max(1, keep)])


def collect_garbage(backend: Backend, prefix: str, retained: Iterable[Tuple[int, str]], *, grace: float = 3600.0,
                    now: Optional[float] = None, still_owner: Callable[[], bool] = lambda: True) -> Dict[str, int]:
    """Delete manifests and chunks that no retained generation references.

    Objects younger than ``grace`` seconds are spared (a new owner may be
    uploading them), and ownership is re-checked just before deleting.
    """
    now = time.time() if now is None else now
    keep_manifests = {m for _, m in retained}
    referenced: Set[str] = set()
    for mid in keep_manifests:
        try:
            entries, _ = decode_manifest(backend.get(prefix + "manifests/" + mid), mid)
        except (ObjectNotFound, IntegrityError, UnsafeManifest):
            continue
        referenced.update(h for e in entries for h, _ in e.chunks)
    doomed: List[str] = []
    freed = 0
    for o in backend.list(prefix + "manifests/"):
        if o.key.rsplit("/", 1)[-1] not in keep_manifests and now - o.mtime > grace:
            doomed.append(o.key)
            freed += o.size
    n_manifests = len(doomed)
    for o in backend.list(prefix + "chunks/"):
        if o.key.rsplit("/", 1)[-1] not in referenced and now - o.mtime > grace:
            doomed.append(o.key)
            freed += o.size
    if doomed and still_owner():
        backend.delete_many(doomed)
    else:
        doomed = []
        freed = n_manifests = 0
    return {"manifests": n_manifests, "chunks": len(doomed) - n_manifests, "bytes": freed}


def host_name() -> str:
    return socket.gethostname()
