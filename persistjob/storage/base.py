"""The storage interface every backend implements.

Six operations, like borgstore's backends: ``get``, ``put``,
``put_if_absent``, ``exists``, ``list``, ``delete``.  Keys are relative,
slash-separated and validated (:func:`check_key`).  ``put`` publishes
atomically (a reader never sees half an object); ``put_if_absent`` is the
create-if-absent primitive that fencing is built on and raises
:class:`~persistjob.errors.ObjectExists` when the key is taken.
"""

import re
from typing import Iterable, Iterator, NamedTuple, Optional

from ..errors import InvalidURL, StorageConfigError
from ..identity import shown_url

_KEY_RE = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")


class ObjectInfo(NamedTuple):
    key: str
    size: int
    mtime: float  # seconds since the epoch


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ValueError."""
    if not _KEY_RE.match(key) or any(p in (".", "..") for p in key.split("/")):
        raise ValueError("unsafe storage key %r" % key)
    if any(p.startswith(".tmp-") for p in key.split("/")):
        raise ValueError("reserved storage key %r" % key)
    return key


class Backend:
    """Base class of storage backends."""

    url: str = ""
    #: Whether ``put_if_absent`` is atomic against concurrent writers.
    atomic_create = True
    #: ``?fencing=unsafe``: the user accepts a store that may not refuse a second create.
    fencing_unsafe = False
    #: ``?dedup=store`` / ``?dedup=job`` (None: whatever the store's ``store.json`` says).
    dedup: Optional[str] = None

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def put(self, key: str, data: bytes, immutable: bool = False) -> None:
        """Publish ``data`` under ``key`` atomically.  ``immutable``: the caller promises that the key is
        content-addressed (its name is the hash of what it holds, and readers verify it), so a backend
        may write it in place instead of through a temporary name."""
        raise NotImplementedError

    def put_if_absent(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str, start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is not an error."""
        raise NotImplementedError

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "<%s %s>" % (type(self).__name__, self.url)


def split_url(url: str) -> tuple:
    """``scheme://rest`` -> (scheme, rest); raise InvalidURL otherwise."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidURL("malformed store URL '%s': expected scheme://..." % shown_url(url))
    scheme, rest = url.split("://", 1)
    if not re.match(r"^[a-z][a-z0-9+.-]*$", scheme):
        raise InvalidURL("malformed store URL '%s': bad scheme" % shown_url(url))
    return scheme, rest


# What OpenSSL, Python's ssl, botocore and Neon/Davix say when they refuse a server's certificate.
_TLS_TRUST = ("certificate verification failed", "certificate verify failed", "issuer is not trusted",
              "self-signed certificate", "self signed certificate", "unable to get local issuer",
              "hostname mismatch", "issued for a different hostname", "certificate has expired",
              "certificate is not yet valid")


def tls_trust_error(store: str, msg: str, hint: str) -> Optional[StorageConfigError]:
    """A server certificate we do not trust is a site configuration problem, not an outage:
    retrying cannot fix it, and the job should be held with this reason (exit 78)."""
    if any(t in msg.lower() for t in _TLS_TRUST):
        return StorageConfigError("TLS: the server's certificate is not trusted for %s: %s (%s)"
                                  % (store, " ".join(msg.split()), hint))
    return None
