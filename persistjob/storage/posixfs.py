"""``file:///path`` backend: a directory on a local or shared POSIX file system.

Objects are written to a hidden temporary name, fsync'ed and published
atomically: ``rename`` for ``put``, ``link`` (fails if the target exists) for
``put_if_absent``.  Temporaries start with ``.tmp-`` and never show in
listings.
"""

import errno
import os
import uuid
from typing import Iterator, Optional
from urllib.parse import parse_qs, unquote

from ..errors import InvalidURL, ObjectExists, ObjectNotFound, StorageConfigError, StorageError, StorageUnavailable
from ..identity import shown_url
from .base import Backend, ObjectInfo, check_key, split_url


def _wrap(exc: OSError, what: str) -> StorageError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageConfigError("file store: permission denied: %s" % what)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageUnavailable("file store: no space left: %s" % what)
    if exc.errno in (errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN):
        return StorageUnavailable("file store: %s: %s" % (what, exc.strerror))
    return StorageError("file store: %s: %s" % (what, exc.strerror))


class PosixBackend(Backend):
    def __init__(self, root: str, fsync: bool = True) -> None:
        if not os.path.isabs(root):
            raise InvalidURL("file store path must be absolute, got %r" % root)
        self.root = os.path.normpath(root)
        self.fsync = fsync
        self.url = "file://" + self.root

    # -- helpers
    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def _write_tmp(self, path: str, data: bytes) -> str:
        d = os.path.dirname(path)
        tmp = os.path.join(d, ".tmp-" + uuid.uuid4().hex)
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                os.makedirs(d, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise _wrap(exc, path) from None
        return tmp

    def _fsync_dir(self, d: str) -> None:
        if not self.fsync:
            return
        try:
            fd = os.open(d, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- interface
    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise _wrap(exc, path) from None

    def put(self, key: str, data: bytes, immutable: bool = False) -> None:
        path = self._path(key)
        tmp = self._write_tmp(path, data)
        try:
            os.rename(tmp, path)
        except OSError as exc:
            os.unlink(tmp)
            raise _wrap(exc, path) from None
        self._fsync_dir(os.path.dirname(path))

    def put_if_absent(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_tmp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ObjectExists(key) from None
        except OSError as exc:
            raise _wrap(exc, path) from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self._fsync_dir(os.path.dirname(path))

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def list(self, prefix: str, start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        # Prefixes used by persistjob end at a directory boundary ("k/log/"),
        # but a partial last component is handled too.
        base = prefix.rpartition("/")[0]
        top = os.path.join(self.root, *base.split("/")) if base else self.root
        found = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            dirnames[:] = [d for d in dirnames if not d.startswith(".tmp-")]
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                key = rel + name
                if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                found.append(ObjectInfo(key, st.st_size, st.st_mtime))
        found.sort()
        return iter(found)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _wrap(exc, key) from None


def from_url(url: str) -> Optional[Backend]:
    scheme, rest = split_url(url)
    if scheme != "file":
        return None
    path, _, query = rest.partition("?")
    if not path.startswith("/"):
        # file://host/path is not supported: only the local host.
        if path.startswith("localhost/"):
            path = path[len("localhost"):]
        else:
            raise InvalidURL("malformed store URL '%s': use file:///absolute/path" % shown_url(url))
    params = parse_qs(query, keep_blank_values=True) if query else {}
    unknown = set(params) - {"fsync"}
    if unknown:
        raise InvalidURL("file store: unknown URL parameter(s) %s" % ", ".join(sorted(unknown)))
    fsync = params.get("fsync", ["1"])[-1] not in ("0", "false", "no")
    return PosixBackend(unquote(path), fsync=fsync)
