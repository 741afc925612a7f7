"""Storage backends built from URLs.

``get_backend(url)`` asks a chain of factories; each returns ``None`` when
the scheme is not its own: ``file://``, ``s3://``, and gfal2's ``root://``,
``davs://``, ``https://``, ``srm://``.
"""

from typing import Callable, List, Optional

from .. import constants as C
from ..errors import InvalidURL
from .base import Backend, ObjectInfo, check_key, split_url
from .retry import RetryingBackend

__all__ = ["Backend", "ObjectInfo", "RetryingBackend", "check_key", "get_backend", "FACTORIES"]


def _posix(url: str) -> Optional[Backend]:
    from . import posixfs

    return posixfs.from_url(url)


def _s3(url: str) -> Optional[Backend]:
    if not url.startswith("s3://"):
        return None
    from . import s3  # boto3 is imported only when an s3:// store is used

    return s3.from_url(url)


def _gfal(url: str) -> Optional[Backend]:
    if url.split("://", 1)[0] not in C.GRID_SCHEMES:
        return None
    from . import gfal  # gfal2 is imported only when a grid store is used

    return gfal.from_url(url)


FACTORIES: List[Callable[[str], Optional[Backend]]] = [_posix, _s3, _gfal]


#: Parameters every scheme accepts in its query, and their values.
_OURS = {
    "fencing": ("unsafe",),  # accept a store that cannot refuse a second create of the same key
    "dedup": ("store", "job"),  # one chunk namespace for the store's jobs, or each job its own
}


def _our_params(url: str) -> "tuple[str, dict]":
    """Take our parameters (``fencing=unsafe``, ``dedup=store|job``) out of a URL: (the URL without
    them, {name: value} of those given)."""
    if "?" not in url:
        return url, {}
    base, query = url.split("?", 1)
    items = [q for q in query.split("&") if q]
    kept = [q for q in items if q.split("=", 1)[0] not in _OURS]
    given = {}
    for q in items:
        name, _, value = q.partition("=")
        if name in _OURS:
            if value not in _OURS[name]:
                raise InvalidURL("%s=%s: the value is one of %s" % (name, value, ", ".join(_OURS[name])))
            given[name] = value
    return (base + ("?" + "&".join(kept) if kept else "")), given


def get_backend(url: str) -> Backend:
    scheme, _ = split_url(url)
    url, params = _our_params(url)
    for factory in FACTORIES:
        backend = factory(url)
        if backend is not None:
            backend.fencing_unsafe = "fencing" in params
            backend.dedup = params.get("dedup")
            return backend
    raise InvalidURL("unsupported store URL scheme %r (supported: %s)" % (scheme, C.STORE_SCHEMES_SHOWN))
