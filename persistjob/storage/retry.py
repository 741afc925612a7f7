"""Retries of the retryable branch, with tenacity.

Only :class:`~persistjob.errors.StorageUnavailable` (connection errors,
throttling, 5xx, 409) is retried, with jittered exponential backoff bounded
by a total time per operation.  412 (:class:`ObjectExists`) is fencing and
never retried.  ``sleep`` and ``clock`` are passed in so that tests never
sleep for real.
"""

import logging
import time
from typing import Any, Callable, Iterable, Iterator, List, Optional

import tenacity

from ..errors import ObjectExists, StorageUnavailable
from .base import Backend, ObjectInfo

log = logging.getLogger(__name__)


def _never() -> bool:
    return False


class RetryingBackend(Backend):
    """Wraps a backend; every operation retries on StorageUnavailable."""

    def __init__(self, inner: Backend, timeout: float, *, sleep: Optional[Callable[[float], None]] = None,
                 clock: Callable[[], float] = time.monotonic, cancel: Callable[[], bool] = _never,
                 max_wait: float = 8.0) -> None:
        self.inner = inner
        self.url = inner.url
        self.atomic_create = inner.atomic_create
        self.fencing_unsafe = inner.fencing_unsafe
        self.dedup = inner.dedup
        self.timeout = float(timeout)
        self.clock = clock
        self.cancel = cancel
        self.max_wait = max_wait
        #: Absolute limit (``clock()`` time) for every operation, or None.
        self.deadline: Optional[float] = None
        self._custom_sleep = sleep
        self._sleep = sleep or self._interruptible_sleep

    def with_budget(self, timeout: float, cancel: Callable[[], bool] = _never) -> "RetryingBackend":
        """The same store, with another time budget and cancel condition."""
        return RetryingBackend(self.inner, timeout, sleep=self._custom_sleep, clock=self.clock, cancel=cancel,
                               max_wait=self.max_wait)

    def _interruptible_sleep(self, seconds: float) -> None:
        end = self.clock() + seconds
        while not self.cancel():
            left = end - self.clock()
            if left <= 0:
                return
            time.sleep(min(left, 0.25))

    def _retrying(self, what: str) -> tenacity.Retrying:
        deadline = self.clock() + self.timeout
        if self.deadline is not None:
            deadline = min(deadline, self.deadline)
        backoff = tenacity.wait_random_exponential(multiplier=0.25, max=self.max_wait)

        def wait(rs: tenacity.RetryCallState) -> float:
            return max(0.0, min(backoff(rs), deadline - self.clock()))

        def stop(rs: tenacity.RetryCallState) -> bool:
            return self.clock() >= deadline or self.cancel()

        def before_sleep(rs: tenacity.RetryCallState) -> None:
            n = rs.attempt_number
            if n & (n - 1) == 0:  # 1, 2, 4, 8 ...: visible, not flooding
                exc = rs.outcome.exception() if rs.outcome else None
                log.warning("storage: %s failed (%s), retrying (attempt %d, up to %.0fs)", what, exc, n, self.timeout)

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(StorageUnavailable),
            wait=wait, stop=stop, sleep=self._sleep, before_sleep=before_sleep, reraise=True,
        )

    def _run(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        return self._retrying(what)(fn, *args)

    def get(self, key: str) -> bytes:
        return self._run("get " + key, self.inner.get, key)

    def put(self, key: str, data: bytes, immutable: bool = False) -> None:
        self._run("put " + key, self.inner.put, key, data, immutable)

    def put_if_absent(self, key: str, data: bytes) -> None:
        attempts = [0]

        def attempt() -> None:
            attempts[0] += 1
            try:
                self.inner.put_if_absent(key, data)
            except ObjectExists:
                # An earlier attempt may have succeeded before its answer was
                # lost: then the object is ours, byte for byte.
                if attempts[0] > 1 and self.inner.get(key) == data:
                    return
                raise

        self._run("create " + key, attempt)

    def exists(self, key: str) -> bool:
        return self._run("head " + key, self.inner.exists, key)

    def list(self, prefix: str, start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        items: List[ObjectInfo] = self._run("list " + prefix, lambda: list(self.inner.list(prefix, start_after)))
        return iter(items)

    def delete(self, key: str) -> None:
        self._run("delete " + key, self.inner.delete, key)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self._run("delete %d objects" % len(keys), self.inner.delete_many, keys)

    def close(self) -> None:
        self.inner.close()
