"""One storage suite over every backend: file:// always, s3:// on a real SeaweedFS, root://, http:// and davs:// on a real xrootd."""

import os
import threading

import pytest

from persistjob.repo import JobRepo
from persistjob.repo.log import JobLog
from persistjob.errors import Fenced, ObjectExists, ObjectNotFound
from tests.conftest import make_store


@pytest.fixture(params=["file", "s3", pytest.param("root", marks=pytest.mark.xrootd),
                        pytest.param("http", marks=pytest.mark.xrootd), pytest.param("davs", marks=pytest.mark.xrootd)])
def store(request, tmp_path):
    """The one storage suite, over every backend: file, S3 (SeaweedFS), root://, http:// and davs:// (xrootd,
    TLS with a throw-away test CA)."""
    return make_store(request, tmp_path, request.param)


def test_contract(store):
    b = store.backend()
    assert not b.exists("a/b")
    with pytest.raises(ObjectNotFound):
        b.get("a/b")
    b.put("a/b", b"one")
    assert b.get("a/b") == b"one" and b.exists("a/b")
    b.put("a/b", b"two")  # put overwrites atomically
    assert b.get("a/b") == b"two"
    b.put_if_absent("a/c", b"x")
    with pytest.raises(ObjectExists):
        b.put_if_absent("a/c", b"y")
    assert b.get("a/c") == b"x"
    b.put("a/d/e", b"deep")
    keys = [o.key for o in b.list("a/")]
    assert keys == ["a/b", "a/c", "a/d/e"]
    assert [o.key for o in b.list("a/", start_after="a/b")] == ["a/c", "a/d/e"]
    assert {o.key: o.size for o in b.list("a/")}["a/b"] == 3
    b.delete("a/b")
    b.delete("a/b")  # missing is fine
    b.delete_many(["a/c", "a/d/e"])
    assert list(b.list("a/")) == []


def test_create_if_absent_race(store):
    """Many threads race for one key: exactly one wins, the others see ObjectExists."""
    b = store.backend()
    wins, losses = [], []
    barrier = threading.Barrier(8)

    def go(i):
        barrier.wait()
        try:
            b.put_if_absent("race/key", b"%d" % i)
            wins.append(i)
        except ObjectExists:
            losses.append(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if b.atomic_create:
        assert len(wins) == 1 and len(losses) == 7
        assert b.get("race/key") == b"%d" % wins[0]
    else:
        # WebDAV on a server that ignores Overwrite: F (XrdHttp): the stored object is whole and is one
        # winner's; more than one writer may believe it won (see test_xrootd.py for the measured rate)
        assert wins and len(wins) + len(losses) == 8
        assert b.get("race/key") in [b"%d" % i for i in wins]


def test_log_fencing(store):
    b = store.backend()
    log1, log2 = JobLog(b, "fence#1"), JobLog(b, "fence#1")
    head = log1.head()
    assert head.seq == 0
    mine = log1.append(head, "claim", run=1)
    other = log2.append(log2.head(), "claim", run=2)  # a newer instance takes over
    assert other.seq == mine.seq + 1
    assert log1.superseded(mine)
    with pytest.raises(Fenced):
        log1.append(mine, "commit", generation=1)
    assert log1.head().seq == other.seq


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_incremental_commit_uploads_what_changed(store, tmp_path):
    """Changing 1% of a 50 MB state uploads under 5% of its bytes."""
    root = tmp_path / "state"
    root.mkdir()
    size = 5 << 20
    for i in range(10):
        _write(root / ("f%d" % i), os.urandom(size))
    b = store.backend()
    ck = JobRepo(b, "job").workspace(str(root), racy=0)
    try:
        snap = ck.snapshot()
        ck.upload(snap)
        total = snap.stats.bytes
        assert total == 50 << 20
        assert snap.stats.transferred > total * 0.99  # random data: all of it, uncompressed
        # change 1% (512 KiB) in place in one file, at an unaligned offset
        with open(root / "f3", "r+b") as f:
            f.seek(1234567)
            f.write(os.urandom(total // 100))
        snap2 = ck.snapshot()
        ck.upload(snap2)
        ratio = snap2.stats.transferred / total
        assert ratio < 0.05, ratio
        assert snap2.stats.read == size  # only the changed file was read again
        # an append to a large file uploads only the new tail
        with open(root / "f5", "ab") as f:
            f.write(os.urandom(100000))
        snap3 = ck.snapshot()
        ck.upload(snap3)
        assert snap3.stats.transferred < 2 * (1 << 20)
    finally:
        ck.close()


def test_restore_round_trip_and_gc(store, tmp_path):
    root = tmp_path / "state"
    (root / "sub" / "deeper").mkdir(parents=True)
    _write(root / "a.bin", os.urandom(3 << 20) + b"z" * (2 << 20))
    _write(root / "sub" / "b.txt", b"hello\n" * 1000)
    _write(root / "empty", b"")
    os.symlink("sub/b.txt", root / "link")
    os.chmod(root / "sub" / "b.txt", 0o640)
    b = store.backend()
    repo = JobRepo(b, "job", keep=2)
    repo.claim()
    ck = repo.workspace(str(root), racy=0)
    try:
        for i in range(4):
            _write(root / "sub" / "deeper" / "gen", os.urandom(300000))
            repo.commit(ck, ck.snapshot())
        assert [g for g, _ in repo.retained] == [4, 3]
        dest = tmp_path / "restored"
        ck2 = repo.workspace(str(dest))
        assert repo.restore(ck2).generation == 4
        ck2.close()
        for rel in ("a.bin", "sub/b.txt", "empty", "sub/deeper/gen"):
            assert (dest / rel).read_bytes() == (root / rel).read_bytes(), rel
        assert os.readlink(dest / "link") == "sub/b.txt"
        assert (os.stat(dest / "sub" / "b.txt").st_mode & 0o777) == 0o640
        assert os.stat(dest / "a.bin").st_mtime_ns == os.stat(root / "a.bin").st_mtime_ns
        before = len(list(b.list(repo.keys.chunk_dir)))
        stats = repo.gc_as_owner(grace=0)
        assert stats["manifests"] == 2 and stats["chunks"] == 2
        assert len(list(b.list(repo.keys.chunk_dir))) == before - 2
        for gen in (4, 3):
            c = JobRepo(b, "job").workspace(str(tmp_path / ("r%d" % gen)))
            assert JobRepo(b, "job").restore(c, generation=gen).generation == gen
            c.close()
    finally:
        ck.close()


def test_removal_record_stops_a_stray_instance_and_survives_purge(store, tmp_path):
    """persistjob rm's removal record: a running instance is fenced by it at its next commit or lease
    check, no run claims the job again, and purge keeps it as the only object (a tombstone)."""
    from persistjob.errors import JobRemoved

    b = store.backend()
    root = tmp_path / "state"
    root.mkdir()
    _write(root / "f", b"one")
    running = JobRepo(b, "removed#1")
    running.claim()
    ws = running.workspace(str(root), racy=0)
    try:
        running.commit(ws, ws.snapshot())
        JobRepo(b, "removed#1").retire("persistjob rm")
        assert running.superseded(), "the lease check sees it"
        _write(root / "f", b"two")
        with pytest.raises(Fenced):
            running.commit(ws, ws.snapshot())
    finally:
        ws.close()
    with pytest.raises(JobRemoved, match="was removed"):
        JobRepo(b, "removed#1").claim()
    gone = JobRepo(b, "removed#1")
    assert gone.purge() > 0
    assert [o.key for o in b.list(gone.keys.root)] == [gone.keys.log(gone.head().seq)]
    with pytest.raises(JobRemoved):
        JobRepo(b, "removed#1").claim()


def test_a_store_that_cannot_fence_is_refused(tmp_path):
    """moto's S3 server before 5.x overwrites on If-None-Match: * — a store that cannot refuse a second
    create. persistjob probes that before its claim: exit 78, one line; ?fencing=unsafe accepts it."""
    import socket
    import subprocess
    import sys
    import time

    from tests.conftest import COUNTER, REPO, clean_env

    moto = os.path.join(REPO, ".venv-moto", "bin", "moto_server")
    if not os.access(moto, os.X_OK):
        pytest.fail("make test installs moto 4.2 (an S3 server without conditional writes) in .venv-moto")
    from tests.servers import free_ports

    port = free_ports(1)[0]
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "moto_server did not start"
                time.sleep(0.2)
        env = clean_env({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                         "AWS_DEFAULT_REGION": "us-east-1"})
        import boto3

        boto3.client("s3", endpoint_url="http://127.0.0.1:%d" % port, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="nofence")
        url = "s3://nofence/jobs?endpoint=http://127.0.0.1:%d" % port
        r = subprocess.run([sys.executable, "-m", "persistjob", "run", "--job-id", "probe#1", "--store", url,
                            "--checkpoint-dir", str(tmp_path / "ck"), "--lifetime", "1s", "--", sys.executable, COUNTER],
                           env=env, capture_output=True, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 78 and len(lines) == 1 and "accepted a second create of the same key" in lines[0], r.stderr
        assert "fencing=unsafe" in lines[0] and not (tmp_path / "ck" / "counter.json").exists()
        listed = boto3.client("s3", endpoint_url="http://127.0.0.1:%d" % port, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1").list_objects_v2(Bucket="nofence")
        assert listed.get("KeyCount", 0) == 0, "the probe left nothing behind"
        r = subprocess.run([sys.executable, "-m", "persistjob", "run", "--job-id", "probe#1", "--store", url + "&fencing=unsafe",
                            "--checkpoint-dir", str(tmp_path / "ck2"), "--lifetime", "1s", "--", sys.executable, COUNTER],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 85, r.stderr
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 9)
        server.wait()
