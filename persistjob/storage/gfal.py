"""Grid storage through gfal2: ``root://``, ``davs://``, ``https://`` (and ``dav://``,
``http://``), ``srm://``.

Works wherever ``python3-gfal2`` (Debian, or the site's gfal2) is importable.

Create-if-absent (the fencing primitive), per protocol:

* ``root://``/``xroot://``/``roots://``: exclusive creation (``kXR_new``,
  ``OpenFlags.NEW`` of the XRootD client): the server refuses a second
  create of the same name. Atomic.
* WebDAV/HTTP: the record is written to a unique temporary name and published
  with ``MOVE ... Overwrite: F`` (RFC 4918: the server must answer 412 when
  the target exists), after a ``stat`` of the target; then it is read back.
  A server that honours ``Overwrite: F`` (dCache, EOS, StoRM) makes this
  atomic. XrdHttp 5.5 ignores it: two writers racing for the same record
  can then both publish, the later one replacing the earlier; the read-back
  catches the loser only when the replacement lands before its read
  (measured in tests/integration/test_xrootd.py). ``atomic_create`` is False
  for these URLs; use root:// on XRootD servers.
* ``srm://``: SRM has no create-exclusive; same as WebDAV, without the
  ``Overwrite: F`` guarantee. Untested here (no SRM server).

Uploads are verified against the server-side ADLER32 checksum
(``xrootd.chksum adler32``) where the server offers one, on top of our own
content hashes. An xrootd computes only a few checksums at once (5 with the
defaults of 5.5; ``xrootd.chksum max``) and tells further clients to come back
later; with XRootD 5.5 we saw many concurrent checksum queries on one connection
stall it for 30 s (an asynchronous answer, ``kXR_waitresp``, that the client
never matched). So a process asks for at most ``checksum_slots`` (URL
parameter, default 2) at a time per server. On root:// the data path (chunk
writes, reads, checksum queries) goes through the XRootD client directly: one
round trip each, no gfal2 stat first; gfal2 does the namespace (list, stat,
rename, delete).
"""

import errno
import os
import threading
import uuid
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from .. import constants as C
from ..errors import InvalidURL, ObjectExists, ObjectNotFound, StorageConfigError, StorageError, StorageUnavailable
from ..identity import shown_url
from .base import Backend, ObjectInfo, check_key, split_url, tls_trust_error

SCHEMES = C.GRID_SCHEMES
_XROOTD = ("root", "roots", "xroot")

# The XRootD client retries a refused connection for minutes by default; persistjob's own retry
# policy (tenacity, bounded by --storage-timeout) must be the one in charge. Read at library load.
for _k, _v in (("XRD_CONNECTIONRETRY", "1"), ("XRD_CONNECTIONWINDOW", "5"), ("XRD_REQUESTTIMEOUT", "60"),
               ("XRD_STREAMTIMEOUT", "60"), ("XRD_TIMEOUTRESOLUTION", "1"),
               ("XRD_STREAMERRORWINDOW", "0")):  # else a failed stream stays failed for 30 min
    os.environ.setdefault(_k, _v)

_RETRYABLE = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
              errno.EAGAIN, errno.EIO, errno.ECOMM, errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN, errno.EBUSY,
              errno.ENOSPC, errno.EDEADLK,  # EDEADLK: xrootd, two writers opening one file at once
              112}  # 112: EHOSTDOWN, what gfal2's http plugin reports for a refused connection


def _import(name: str) -> Any:
    import importlib
    import sys

    try:
        return importlib.import_module(name)
    except ImportError:
        for d in ("/usr/lib/python3/dist-packages", "/usr/lib64/python3/site-packages", "/usr/lib/python3/site-packages"):
            if os.path.isdir(d) and d not in sys.path:
                sys.path.append(d)
                try:
                    return importlib.import_module(name)
                except ImportError:
                    sys.path.remove(d)
        raise


def _gfal2() -> Any:
    try:
        return _import("gfal2")
    except ImportError:
        raise StorageConfigError("root://, davs:// and srm:// stores need gfal2's Python bindings "
                                 "(Debian: apt-get install python3-gfal2 gfal2-plugin-xrootd gfal2-plugin-http)") from None


_GRID_CA_DIR = "/etc/grid-security/certificates"  # where grid sites keep the CAs they trust
_TLS_HINT = "set X509_CERT_DIR to the directory of the CA certificates to trust, e.g. " + _GRID_CA_DIR


def _wrap(exc: Any, what: str, store: str = "") -> StorageError:
    code = getattr(exc, "code", 0)
    msg = " ".join(str(getattr(exc, "message", exc)).split())
    trust = tls_trust_error(store or what, msg, _TLS_HINT)
    if trust is not None:
        return trust
    if code == errno.ENOENT:
        return ObjectNotFound(what)
    if code == errno.EEXIST:
        return ObjectExists(what)
    if code in _RETRYABLE:
        return StorageUnavailable("%s: %s" % (what, msg))
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageConfigError("gfal2: permission denied for %s: %s" % (what, msg))
    return StorageUnavailable("%s: %s" % (what, msg)) if "connect" in msg.lower() else StorageError("%s: %s" % (what, msg))


DEFAULT_CHECKSUM_SLOTS = 2
_READ = 8 << 20  # bytes asked per read of an object
_slots: Dict[Tuple[str, int], threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def _checksum_slots(url: str, n: int) -> threading.BoundedSemaphore:
    """One semaphore per server and process: the server's limit is per server."""
    u = urlsplit(url)
    key = ("%s:%s" % (u.hostname, u.port), n)
    with _slots_lock:
        sem = _slots.get(key)
        if sem is None:
            sem = _slots[key] = threading.BoundedSemaphore(n)
        return sem


def _tmp_url(url: str) -> str:
    """A unique temporary name beside ``url`` (hidden from listings: ``.tmp-``)."""
    parent, name = url.rsplit("/", 1)
    return "%s/.tmp-%s-%s" % (parent, uuid.uuid4().hex, name)


def _xrootd_error(status: Any, what: str) -> StorageError:
    message = "%s: %s" % (what, status.message.strip())
    if status.errno == 3011:  # kXR_NotFound
        return ObjectNotFound(what)
    if status.errno in (3010,):  # kXR_NotAuthorized
        return StorageConfigError(message)
    return StorageUnavailable(message)  # transport failures, overload, I/O errors: retryable


# Size: one backend over two client libraries (the XRootD client for root:// data, gfal2 for the
# namespace and WebDAV), each of the six operations with its protocol variants and error mapping.
class GfalBackend(Backend):
    def __init__(self, url: str, checksum: bool = True, checksum_slots: int = DEFAULT_CHECKSUM_SLOTS) -> None:
        self.gfal2 = _gfal2()
        self.base = url.rstrip("/")
        self.url = self.base
        self.scheme = url.split("://", 1)[0]
        self.xrootd = self.scheme in _XROOTD
        self.atomic_create = self.xrootd
        self.checksum = checksum
        self._checksum_slots = _checksum_slots(url, checksum_slots)
        self._tls = threading.local()
        self._xrd: Any = None
        if self.xrootd:
            try:
                self._xrd = _import("XRootD.client")
                self._xrd_flags = _import("XRootD.client.flags")
            except ImportError:
                raise StorageConfigError("root:// create-if-absent needs the XRootD Python client "
                                         "(Debian: apt-get install python3-xrootd)") from None
            u = urlsplit(self.base)
            self._xrd_fs = self._xrd.FileSystem("%s://%s" % (u.scheme, u.netloc))

    @property
    def ctx(self) -> Any:
        c = getattr(self._tls, "ctx", None)
        if c is None:
            c = self._tls.ctx = self.gfal2.creat_context()
        return c

    def _url(self, key: str) -> str:
        return self.base + "/" + check_key(key)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.gfal2.GError as exc:
            raise _wrap(exc, what, self.base) from None

    def _mkparent(self, url: str) -> None:
        parent = url.rsplit("/", 1)[0]
        self._call(parent, self.ctx.mkdir_rec, parent, 0o755)

    def _write(self, url: str, data: bytes) -> None:
        if self.xrootd:
            return self._xrootd_write(url, data)

        def write() -> None:
            f = self.ctx.open(url, "w")
            view = memoryview(data)
            while view:
                n = f.write(bytes(view[: 8 << 20]))
                view = view[n if n else len(view[: 8 << 20]):]
            del f

        try:
            self._call(url, write)
        except ObjectNotFound:
            self._mkparent(url)
            self._call(url, write)

    def _verify(self, url: str, data: bytes) -> None:
        if not self.checksum:
            return
        with self._checksum_slots:
            remote = self._xrootd_checksum(url) if self.xrootd else self._gfal_checksum(url)
        if remote is None:
            self.checksum = False  # the server offers none: rely on our own content hashes
            return
        local = "%08x" % (zlib.adler32(data) & 0xFFFFFFFF)
        if remote.lower().lstrip("0") != local.lstrip("0"):
            raise StorageUnavailable("checksum mismatch after upload of %s (server %s, ours %s)" % (url, remote, local))

    def _gfal_checksum(self, url: str) -> Optional[str]:
        try:
            return str(self.ctx.checksum(url, "ADLER32"))
        except self.gfal2.GError as exc:
            if exc.code in _RETRYABLE:
                raise _wrap(exc, url, self.base) from None
            return None

    def _xrootd_checksum(self, url: str) -> Optional[str]:
        path = urlsplit(url).path
        status, answer = self._xrd_fs.query(self._xrd_flags.QueryCode.CHECKSUM, path)
        if status.ok:
            words = answer.split(b"\0", 1)[0].decode("ascii", "replace").split()
            if len(words) == 2 and words[0].lower() == "adler32":
                return words[1]
            return None  # another algorithm configured: not comparable with ours
        if status.errno == 3013 or "not supported" in status.message.lower():  # kXR_Unsupported: no xrootd.chksum
            return None
        # Anything else (connection, overload, the file not yet visible) may pass: the put is retried.
        raise StorageUnavailable("checksum of %s: %s" % (path, status.message.strip()))

    # -- interface
    def get(self, key: str) -> bytes:
        url = self._url(key)
        if self.xrootd:
            return self._xrootd_read(key, url)

        def read() -> bytes:
            f = self.ctx.open(url, "r")
            parts: List[bytes] = []
            while True:
                b = f.read_bytes(8 << 20)
                if not b:
                    break
                parts.append(b)
            del f
            return b"".join(parts)

        return self._call(key, read)

    def put(self, key: str, data: bytes, immutable: bool = False) -> None:
        url = self._url(key)
        if immutable:
            # Content-addressed (the caller says so): every reader verifies it against its name, and no
            # manifest names it before this put returns, so it is written in place (one round trip less
            # than temp + rename).
            self._write(url, data)
            self._verify(url, data)
            return
        tmp = _tmp_url(url)
        self._write(tmp, data)
        try:
            self._verify(tmp, data)
            self._call(key, self.ctx.rename, tmp, url)
        except BaseException:
            self._discard(tmp)
            raise

    def put_if_absent(self, key: str, data: bytes) -> None:
        url = self._url(key)
        if self.xrootd:
            return self._xrootd_write(url, data, exclusive=True, what=key)
        if self.exists(key):
            raise ObjectExists(key)
        tmp = _tmp_url(url)
        self._write(tmp, data)
        try:
            self._move_no_overwrite(tmp, url, key)
        except BaseException:
            self._discard(tmp)
            raise
        if self.get(key) != data:  # a server that ignored Overwrite: F let another writer replace us
            raise ObjectExists(key)

    def _discard(self, tmp: str) -> None:
        try:
            self.ctx.unlink(tmp)
        except Exception:  # best effort: temporaries are hidden from listings anyway
            pass

    def _move_no_overwrite(self, src: str, dst: str, key: str) -> None:
        if self.scheme not in ("davs", "dav", "https", "http"):
            if self.exists(key):
                raise ObjectExists(key)
            self._call(key, self.ctx.rename, src, dst)
            return
        import http.client
        import ssl

        def http_url(u: str) -> str:
            return "https" + u[4:] if u.startswith("davs") else ("http" + u[3:] if u.startswith("dav:") else u)

        s, d = urlsplit(http_url(src)), http_url(dst)
        conn: Any
        if s.scheme == "https":
            cafile = os.environ.get("X509_CERT_DIR") or (_GRID_CA_DIR if os.path.isdir(_GRID_CA_DIR) else None)
            sslctx = ssl.create_default_context(capath=cafile) if cafile else ssl.create_default_context()
            conn = http.client.HTTPSConnection(s.hostname or "", s.port or 443, timeout=60, context=sslctx)
        else:
            conn = http.client.HTTPConnection(s.hostname or "", s.port or 80, timeout=60)
        try:
            conn.request("MOVE", s.path, headers={"Destination": d, "Overwrite": "F"})
            status = conn.getresponse().status
        except ssl.SSLCertVerificationError as exc:
            raise tls_trust_error(self.base, str(exc), _TLS_HINT) or StorageConfigError("MOVE %s: %s" % (key, exc)) from None
        except OSError as exc:
            raise StorageUnavailable("MOVE %s: %s" % (key, exc)) from None
        finally:
            conn.close()
        if status == 412:
            raise ObjectExists(key)
        if status >= 500 or status in (408, 409, 429):
            raise StorageUnavailable("MOVE %s: HTTP %d" % (key, status))
        if status >= 400:
            raise StorageConfigError("MOVE %s refused: HTTP %d" % (key, status))

    def _xrootd_write(self, url: str, data: bytes, exclusive: bool = False, what: str = "") -> None:
        """Write a whole object: open, write, close. ``exclusive`` is create-if-absent (``kXR_new``:
        ObjectExists when the name is taken), else the object is replaced (``kXR_delete``)."""
        flags = self._xrd_flags.OpenFlags
        verb, what = ("create" if exclusive else "write"), (what or url)
        f = self._xrd.File()
        status, _ = f.open(url, (flags.NEW if exclusive else flags.DELETE) | flags.MAKEPATH)
        if not status.ok:
            if exclusive and (status.errno == 3018 or "exists" in status.message.lower()):  # kXR_ItExists
                raise ObjectExists(what)
            raise _xrootd_error(status, "%s %s" % (verb, what))
        try:
            status, _ = f.write(data)
            if not status.ok:
                raise _xrootd_error(status, "%s %s" % (verb, what))
        finally:
            closed, _ = f.close()
        if not closed.ok:
            raise _xrootd_error(closed, "close %s" % what)

    def _xrootd_read(self, key: str, url: str) -> bytes:
        f = self._xrd.File()
        status, _ = f.open(url)
        if not status.ok:
            raise _xrootd_error(status, key)
        try:
            parts: List[bytes] = []
            offset = 0
            while True:  # a read returns less than asked only at the end (so a chunk takes one read)
                status, data = f.read(offset, _READ)
                if not status.ok:
                    raise _xrootd_error(status, key)
                parts.append(data)
                offset += len(data)
                if len(data) < _READ:
                    break
            return b"".join(parts)  # one part: that part itself, not a copy
        finally:
            f.close()

    def exists(self, key: str) -> bool:
        try:
            self._call(key, self.ctx.stat, self._url(key))
        except ObjectNotFound:
            return False
        return True

    def _listdir(self, d: str, url: str) -> Iterator[Tuple[str, bool, int, float]]:
        """(name, is_dir, size, mtime) of one directory, in one request: XRootD's dirlist with stat
        information, or gfal2's readpp (WebDAV: one PROPFIND). A stat per entry instead took 75 s
        for 2,000 log records over davs:// on this machine, and a round trip each over a WAN."""
        import stat as st

        if self.xrootd:
            flags = self._xrd_flags
            status, listing = self._xrd_fs.dirlist(urlsplit(url).path, flags.DirListFlags.STAT)
            if not status.ok:
                raise _xrootd_error(status, d or "/")
            for e in listing or ():
                info = e.statinfo
                if info is None:  # a stat the server could not give: ask for it alone
                    one = self._call(d, self.ctx.stat, url + "/" + e.name)
                    yield e.name, st.S_ISDIR(one.st_mode), int(one.st_size), float(one.st_mtime)
                else:
                    yield e.name, bool(info.flags & flags.StatInfoFlags.IS_DIR), int(info.size), float(info.modtime)
            return
        handle = self._call(d or "/", self.ctx.opendir, url)
        while True:
            dirent, info = self._call(d or "/", handle.readpp)
            if dirent is None:
                return
            yield dirent.d_name, st.S_ISDIR(info.st_mode), int(info.st_size), float(info.st_mtime)

    def list(self, prefix: str, start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        found: List[ObjectInfo] = []
        stack = [base_key]
        while stack:
            d = stack.pop()
            url = self.base + ("/" + d if d else "")
            try:
                entries = list(self._listdir(d, url))
            except ObjectNotFound:
                continue
            for name, is_dir, size, mtime in entries:
                if name in (".", "..") or name.startswith(".tmp-"):
                    continue
                key = (d + "/" + name) if d else name
                if is_dir:
                    if key.startswith(prefix) or prefix.startswith(key + "/"):
                        stack.append(key)
                    continue
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    found.append(ObjectInfo(key, size, mtime))
        found.sort()
        return iter(found)

    def delete(self, key: str) -> None:
        try:
            self._call(key, self.ctx.unlink, self._url(key))
        except ObjectNotFound:
            pass


def from_url(url: str) -> Optional[Backend]:
    scheme, rest = split_url(url)
    if scheme not in SCHEMES:
        return None
    u = urlsplit(url)
    if not u.hostname:
        raise InvalidURL("malformed store URL '%s': no host" % shown_url(url))
    if u.query:
        q = dict(p.partition("=")[::2] for p in u.query.split("&"))
        unknown = set(q) - {"checksum", "checksum_slots"}
        if unknown:
            raise InvalidURL("gfal2 store: unknown URL parameter(s) %s" % ", ".join(sorted(unknown)))
        slots = q.get("checksum_slots", str(DEFAULT_CHECKSUM_SLOTS))
        if not slots.isdigit() or int(slots) < 1:
            raise InvalidURL("gfal2 store: checksum_slots must be a positive integer, not %r" % slots)
        return GfalBackend(url.split("?", 1)[0], checksum=q.get("checksum", "1") not in ("0", "false", "no"),
                           checksum_slots=int(slots))
    return GfalBackend(url)
