"""Retry policy with a fake clock, snapshot caching and chunk boundaries (local directory)."""

import os
from typing import Dict, List

import pytest

from persistjob.repo import JobRepo
from persistjob.errors import ObjectExists, ObjectNotFound, StorageConfigError, StorageUnavailable
from persistjob.storage import Backend, RetryingBackend


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: List[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class Flaky(Backend):
    """An in-memory backend that fails a given number of times (unit tests of our own logic only)."""

    def __init__(self, failures: int = 0, exc: Exception = StorageUnavailable("down"), commit_then_fail: bool = False) -> None:
        self.data: Dict[str, bytes] = {}
        self.failures = failures
        self.exc = exc
        self.calls = 0
        self.commit_then_fail = commit_then_fail

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.exc

    def get(self, key: str) -> bytes:
        if key not in self.data:
            raise ObjectNotFound(key)
        return self.data[key]

    def put(self, key: str, data: bytes, immutable: bool = False) -> None:
        self._maybe_fail()
        self.data[key] = data

    def put_if_absent(self, key: str, data: bytes) -> None:
        if self.commit_then_fail and self.failures > 0:
            self.data.setdefault(key, data)  # the write lands, the answer is lost
            self._maybe_fail()
        self._maybe_fail()
        if key in self.data:
            raise ObjectExists(key)
        self.data[key] = data


def test_retries_only_the_retryable_branch():
    clock = FakeClock()
    b = RetryingBackend(Flaky(failures=3), timeout=60, sleep=clock.sleep, clock=clock)
    b.put("k", b"v")
    assert b.inner.calls == 4 and len(clock.sleeps) == 3
    assert all(0 <= s <= 8 for s in clock.sleeps)

    for exc in (StorageConfigError("denied"), ObjectExists("k")):
        flaky = Flaky(failures=5, exc=exc)
        with pytest.raises(type(exc)):
            RetryingBackend(flaky, timeout=60, sleep=clock.sleep, clock=clock).put("k", b"v")
        assert flaky.calls == 1, "never retried"


def test_retries_are_bounded_by_total_time():
    clock = FakeClock()
    flaky = Flaky(failures=10 ** 6)
    b = RetryingBackend(flaky, timeout=30, sleep=clock.sleep, clock=clock)
    with pytest.raises(StorageUnavailable):
        b.put("k", b"v")
    assert 30 <= clock.now <= 30.001 and flaky.calls > 3


def test_deadline_and_cancel():
    clock = FakeClock()
    b = RetryingBackend(Flaky(failures=10 ** 6), timeout=300, sleep=clock.sleep, clock=clock)
    b.deadline = 5.0
    with pytest.raises(StorageUnavailable):
        b.put("k", b"v")
    assert clock.now <= 5.0001
    flag = {"stop": False}

    def sleep(s: float) -> None:
        clock.sleep(s)
        flag["stop"] = True

    c = RetryingBackend(Flaky(failures=10 ** 6), timeout=300, sleep=sleep, clock=clock, cancel=lambda: flag["stop"])
    with pytest.raises(StorageUnavailable):
        c.put("k", b"v")
    assert c.inner.calls == 2


def test_create_if_absent_that_landed_before_a_lost_answer_is_ours():
    clock = FakeClock()
    flaky = Flaky(failures=1, commit_then_fail=True)
    b = RetryingBackend(flaky, timeout=60, sleep=clock.sleep, clock=clock)
    b.put_if_absent("log/1", b"mine")  # first attempt landed, its answer was lost; the retry sees 412 with our bytes
    assert flaky.data["log/1"] == b"mine"
    flaky.data["log/2"] = b"theirs"
    with pytest.raises(ObjectExists):
        b.put_if_absent("log/2", b"mine")


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_unchanged_files_are_not_read_again_and_boundaries_survive_edits(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    _write(root / "big", os.urandom(8 << 20))
    _write(root / "small", b"x")
    ck = JobRepo(Flaky(), "p").workspace(str(root), chunk_size=1 << 20, racy=0)
    try:
        s1 = ck.snapshot()
        assert s1.stats.read == (8 << 20) + 1 and s1.stats.chunks_new == 9
        s2 = ck.snapshot()
        assert s2.stats.read == 0 and s2.stats.chunks_new == 0
        with open(root / "big", "r+b") as f:
            f.seek(3 * (1 << 20) + 100)
            f.write(b"edit")
        s3 = ck.snapshot()
        assert s3.stats.read == 8 << 20 and s3.stats.chunks_new == 1
        with open(root / "big", "ab") as f:
            f.write(b"tail" * 1000)
        s4 = ck.snapshot()
        assert s4.stats.chunks_new == 1
        big = [e for e in s4.entries if e.path == "big"][0]
        assert big.size == (8 << 20) + 4000 and len(big.chunks) == 9
    finally:
        ck.close()


def test_racy_files_are_read_again(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    _write(root / "f", b"a" * 100)
    ck = JobRepo(Flaky(), "p").workspace(str(root), racy=3600)
    try:
        ck.snapshot()
        s2 = ck.snapshot()
        assert s2.stats.read == 100, "a file modified just before the snapshot is not trusted"
    finally:
        ck.close()


def test_snapshot_skips_special_files_and_escaping_links(tmp_path, caplog):
    root = tmp_path / "s"
    root.mkdir()
    os.mkfifo(root / "fifo")
    os.symlink("/etc/passwd", root / "abs")
    os.symlink("../outside", root / "up")
    os.symlink("inside", root / "ok")
    ck = JobRepo(Flaky(), "p").workspace(str(root))
    try:
        snap = ck.snapshot()
    finally:
        ck.close()
    assert [e.path for e in snap.entries] == ["ok"]
    assert "skipping fifo" in caplog.text and "points outside" in caplog.text


def test_page_chunks_find_their_cuts_again_after_pages_are_inserted():
    """CRIU's page images shift when a mapping appears: page-boundary cuts chosen by content come back,
    so the chunks after the insertion are the same; fixed 1 MiB chunks would all differ."""
    import hashlib
    import io
    import random

    from persistjob.checkpoint import PAGE, fixed_chunks, page_chunks

    rng = random.Random(7)
    pages = [rng.randbytes(PAGE) for _ in range(3000)]  # about 12 MB
    before = b"".join(pages)
    after = b"".join(pages[:1000] + [rng.randbytes(PAGE) for _ in range(3)] + pages[1000:])

    def digests(data, split):
        chunks = list(split(io.BytesIO(data), 1 << 20))
        assert b"".join(chunks) == data
        return [hashlib.sha256(c).hexdigest() for c in chunks], [len(c) for c in chunks]

    old, sizes = digests(before, page_chunks)
    new, _ = digests(after, page_chunks)
    assert all(n % PAGE == 0 for n in sizes[:-1]) and min(sizes[:-1]) >= 256 << 10 and max(sizes) <= 4 << 20
    assert len(set(new) - set(old)) <= 2, "only the chunk that holds the new pages is new"
    fixed_old, _ = digests(before, fixed_chunks)
    fixed_new, _ = digests(after, fixed_chunks)
    shifted = len(fixed_new) - (1000 * PAGE) // (1 << 20)  # every fixed chunk from the insertion on
    assert len(set(fixed_new) - set(fixed_old)) == shifted >= 8
    assert list(page_chunks(io.BytesIO(b""), 1 << 20)) == []
    assert list(page_chunks(io.BytesIO(b"x" * 100), 1 << 20)) == [b"x" * 100]
