"""The checkpoint codec: chunks and manifests as bytes, verified on the way back.

A chunk is one codec byte (0 raw, 1 zstd) and the data; its name is the sha256 of the raw data,
and :func:`decode_chunk` checks it.  A manifest is zstd-compressed JSON listing files, directories
and symlinks with their modes, sizes, mtimes and chunk lists; its name is the sha256 of its bytes,
and :func:`decode_manifest` checks that and validates every path (nothing absolute, no ``..``, no
symlink escapes, no devices).  Pure functions: no storage, no keys, no files.
"""

import hashlib
import json
import os
import threading
import time
import zlib
from typing import Any, Callable, Dict, List, NamedTuple, Set, Tuple, Union

from . import constants as C
from .errors import ConfigError, IntegrityError, UnsafeManifest

FORMAT_VERSION = 1
_CODEC_RAW = b"\x00"
_CODEC_ZSTD = b"\x01"
_CODEC_ZLIB = b"\x02"
_MAX_CHUNK = 64 << 20
_HEX = set("0123456789abcdef")


def is_hash(s: Any) -> bool:
    return isinstance(s, str) and len(s) == 64 and set(s) <= _HEX


def check_format(version: int, what: str) -> None:
    if version > FORMAT_VERSION:
        raise ConfigError("%s has format %d, newer than this persistjob understands (%d): upgrade persistjob on "
                          "this worker" % (what, version, FORMAT_VERSION))


# ------------------------------------------------------------------ chunks

# Codecs a writer may choose (--codec, constants.CODECS).  zlib is in every Python, so a checkpoint
# written with it restores anywhere; zstd is faster and smaller but needs the zstandard module
# wherever it is read.
CODECS, DEFAULT_CODEC = C.CODECS, C.DEFAULT_CODEC
_CODEC_BYTE = {"zstd": _CODEC_ZSTD, "zlib": _CODEC_ZLIB}
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SAMPLE_BYTES = 16 << 10  # zlib is slow on incompressible data: try a sample first

_tls = threading.local()


def _zstandard(why: str) -> Any:
    try:
        import zstandard
    except ImportError:
        raise ConfigError("%s needs the zstandard module, which this Python lacks: install it (pip install zstandard, "
                          "Debian python3-zstandard), or write checkpoints with --codec zlib, which any Python reads"
                          % why) from None
    return zstandard


def _compressor() -> Any:
    c = getattr(_tls, "cctx", None)
    if c is None:
        c = _tls.cctx = _zstandard("writing with --codec zstd").ZstdCompressor(level=1)
    return c


def _decompressor(what: str) -> Any:
    d = getattr(_tls, "dctx", None)
    if d is None:
        d = _tls.dctx = _zstandard("reading %s (written with zstd)" % what).ZstdDecompressor()
    return d


def check_codec(codec: str) -> str:
    """Refuse, before anything is written, a codec this Python cannot write."""
    if codec not in CODECS:
        raise ConfigError("unknown codec %r (choose %s)" % (codec, " or ".join(CODECS)))
    if codec == "zstd":
        _compressor()
    return codec


def _pack(data: bytes, codec: str, worth: Callable[[float, float], bool]) -> bytes:
    if len(data) > 2 * SAMPLE_BYTES:
        t = time.thread_time()
        sample = _compressor().compress(data[:SAMPLE_BYTES]) if codec == "zstd" else zlib.compress(data[:SAMPLE_BYTES], 1)
        if not worth(1.0 - len(sample) / SAMPLE_BYTES, time.thread_time() - t):
            return b""  # the sample does not compress enough to pay for compressing the whole
    if codec == "zstd":
        return _compressor().compress(data)
    return zlib.compress(data, 1)


def _default_worth(saving: float, seconds: float = 0.0) -> bool:
    return saving > 0.1


def _unzlib(body: bytes, limit: int) -> bytes:
    d = zlib.decompressobj()
    data = d.decompress(body, limit)
    if d.unconsumed_tail or not d.eof:
        raise IntegrityError("more data than expected, or a truncated stream")
    return data


def encode_chunk(data: bytes, codec: str = DEFAULT_CODEC,
                 worth: Callable[[float, float], bool] = _default_worth) -> bytes:
    """One codec byte and the data, compressed when it pays, else raw.  ``worth(saving, seconds)`` says
    whether a chunk whose 16 KiB sample compressed by ``saving`` (0..1) in ``seconds`` of CPU is worth
    compressing (by default: more than 10%; the checkpointer weighs it against the store's upload
    rate); the result must also be 3% smaller."""
    packed = _pack(data, codec, worth)
    if packed and len(packed) < len(data) * 0.97:
        return _CODEC_BYTE[codec] + packed
    return raw_chunk(data)


def raw_chunk(data: bytes) -> bytes:
    """A chunk stored as it is (no sample tried)."""
    return _CODEC_RAW + bytes(data)


def decode_chunk(blob: bytes, digest: str, size: int) -> "Union[bytes, memoryview]":
    """Decode a stored chunk and verify it against its name."""
    if not blob:
        raise IntegrityError("chunk %s is empty" % digest[:12])
    codec, body = blob[:1], memoryview(blob)[1:]  # a view: a raw chunk is not copied again
    if codec == _CODEC_ZSTD:
        dctx = _decompressor("chunk %s" % digest[:12])  # a missing module is a ConfigError, not damage
    try:
        if codec == _CODEC_ZSTD:
            data = dctx.decompress(body, max_output_size=size)
        elif codec == _CODEC_ZLIB:
            data = _unzlib(body, size)
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


def encode_manifest(entries: List[Entry], meta: Dict[str, Any], codec: str = DEFAULT_CODEC) -> bytes:
    """Compressed JSON; the format is told by its first bytes (a zstd frame's magic, or a zlib header)."""
    body = dict(meta, v=FORMAT_VERSION, entries=[e.to_json() for e in entries])
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return _compressor().compress(raw) if codec == "zstd" else zlib.compress(raw, 6)


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
        if blob[:4] == _ZSTD_MAGIC:
            text = _decompressor("manifest %s" % manifest_id[:12]).decompress(blob, max_output_size=1 << 30)
        else:
            text = _unzlib(blob, 1 << 30)
        body = json.loads(text.decode())
        raw = body.pop("entries")
    except ConfigError:
        raise
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
            if any(not is_hash(h) or not 0 <= n <= _MAX_CHUNK for h, n in chunks) or sum(n for _, n in chunks) != size:
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
