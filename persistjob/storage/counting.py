"""A backend that counts what it is asked: requests by kind and bytes read (``persistjob status --stats``
and its Prometheus output; the cost of a view of many jobs is its requests per job)."""

import threading
from collections import Counter
from typing import Dict, Iterable, Iterator, Optional

from .base import Backend, ObjectInfo


class CountingBackend(Backend):
    """Wraps a backend; each call of the wrapped backend is one request here (an S3 listing of more than
    1,000 keys is several requests to the server, counted as one)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.url = inner.url
        self.atomic_create = inner.atomic_create
        self.fencing_unsafe = inner.fencing_unsafe
        self.dedup = inner.dedup
        self.requests: Counter = Counter()
        self.bytes_read = 0
        self._lock = threading.Lock()

    def _count(self, kind: str, nbytes: int = 0) -> None:
        with self._lock:
            self.requests[kind] += 1
            self.bytes_read += nbytes

    def get(self, key: str) -> bytes:
        try:
            data = self.inner.get(key)
        except BaseException:
            self._count("get")
            raise
        self._count("get", len(data))
        return data

    def put(self, key: str, data: bytes, immutable: bool = False) -> None:
        self._count("put")
        self.inner.put(key, data, immutable)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self._count("put")
        self.inner.put_if_absent(key, data)

    def exists(self, key: str) -> bool:
        self._count("exists")
        return self.inner.exists(key)

    def list(self, prefix: str, start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        self._count("list")
        return self.inner.list(prefix, start_after)

    def delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)

    def delete_many(self, keys: Iterable[str]) -> None:
        self._count("delete")
        self.inner.delete_many(keys)

    def close(self) -> None:
        self.inner.close()

    def totals(self) -> Dict[str, int]:
        with self._lock:
            return dict(self.requests, bytes_read=self.bytes_read)
