"""Chunks kept once for all jobs of a store (``?dedup=store``) and the store-wide gc, on a
directory store and on SeaweedFS (the real S3 server): the race against concurrent commits, and the
figures of issue 15 (50 jobs sharing a 50 MB application)."""

import hashlib
import json
import os
import random
import sys
import threading
import time

import pytest

from persistjob import contract as X
from persistjob.errors import ConfigError, IntegrityError
from persistjob.repo import JobRepo, shared
from persistjob.repo.layout import JOBS_ROOT, SHARED_CHUNK_ROOT, STORE_CONFIG, Layout
from tests.conftest import COUNTER, Store, job_id, make_store

MB = 1 << 20


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path) -> Store:
    return make_store(request, tmp_path, request.param)


def dedup(store: Store, window: float = 1.0, lease: float = 60.0) -> Store:
    """The store made shared (a short window, so that gc passes are quick), as a Store whose URL says so."""
    s = Store(store.kind, store.url + "?dedup=store", store.env, store.server)
    shared.store_config(s.backend(), shared.StoreConfig(True, window, lease))
    return s


def fill(path, app: bytes, own: bytes) -> None:
    os.makedirs(path, exist_ok=True)
    for name, data in (("app.bin", app), ("own.bin", own)):
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)


def commit_once(store: Store, jid: str, path, chunk_size: int = 256 * 1024):
    """Claim, commit the directory as it is, end the run: (repo, the commit's stats)."""
    repo = JobRepo(store.backend(), jid)
    repo.claim()
    ws = repo.workspace(str(path), racy=0, chunk_size=chunk_size)
    try:
        snap = ws.snapshot()
        repo.commit(ws, snap)
        repo.end_run(X.EXIT_CHECKPOINTED, "test")
    finally:
        ws.close()
    return repo, snap.stats


def stored(store: Store, prefix: str = "") -> int:
    return sum(o.size for o in store.backend().list(prefix))


def digest_tree(path) -> dict:
    out = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def restore_to(store: Store, jid: str, dest) -> dict:
    repo = JobRepo(store.backend(), jid)
    ws = repo.workspace(str(dest))
    try:
        assert repo.restore(ws, fallback=False).generation > 0
    finally:
        ws.close()
    return digest_tree(dest)


def retrying(store: Store):
    """The store as the wrapper and the CLI use it: connection errors retried (many threads at once
    here: SeaweedFS sometimes refuses a connection)."""
    from persistjob.storage import RetryingBackend

    return RetryingBackend(store.backend(), 120.0)


def gc(store: Store, grace: float = 0.0) -> dict:
    b = store.backend()
    return shared.store_gc(b, grace, lambda j: JobRepo(b, j).live_chunks())


def test_shared_chunks_are_stored_once(store, tmp_path):
    s = dedup(store)
    app = os.urandom(2 * MB)
    uploads = []
    for i in range(3):
        fill(tmp_path / ("w%d" % i), app, os.urandom(64 * 1024))
        _, st = commit_once(s, "job-%d" % i, tmp_path / ("w%d" % i))
        uploads.append(st.transferred)
    assert uploads[0] > 2 * MB
    assert uploads[1] < 200 * 1024 and uploads[2] < 200 * 1024, uploads  # its own 64 KB, not the application
    chunks = stored(s, SHARED_CHUNK_ROOT)
    assert 2 * MB + 3 * 64 * 1024 <= chunks < 1.05 * (2 * MB + 3 * 64 * 1024)
    keys = [o.key for o in s.backend().list("")]
    assert not [k for k in keys if "/chunks/" in k], "no job keeps chunks of its own in a shared store"
    assert sorted(k for k in keys if k.startswith(JOBS_ROOT)) == sorted(
        Layout("job-%d" % i).registration for i in range(3))
    for i in range(3):
        assert restore_to(s, "job-%d" % i, tmp_path / ("r%d" % i)) == digest_tree(tmp_path / ("w%d" % i))


def test_the_store_decides_and_a_disagreeing_url_is_refused(store, tmp_path):
    s = dedup(store)
    fill(tmp_path / "w", os.urandom(MB), b"own")
    plain = Store(store.kind, store.url, store.env, store.server)  # no ?dedup: the store's store.json decides
    commit_once(plain, "job", tmp_path / "w")
    assert stored(s, SHARED_CHUNK_ROOT) > MB
    r = plain.cli("store", "gc", "--store", store.url + "?dedup=job")
    assert r.returncode == X.EXIT_CONFIG and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["persistjob: error: the store keeps chunks once for all its jobs (its "
                                             "store.json says dedup=store); ?dedup=job cannot write to it"]
    assert json.loads(s.backend().get(STORE_CONFIG))["dedup"] == "store"


def test_dedup_is_chosen_for_a_new_store_only(store, tmp_path):
    fill(tmp_path / "w", os.urandom(MB), b"own")
    commit_once(store, "old-job", tmp_path / "w")
    before = {o.key for o in store.backend().list("")}
    with pytest.raises(ConfigError, match="chosen when a store is new"):
        shared.store_config(Store(store.kind, store.url + "?dedup=store", store.env).backend())
    r = store.cli("store", "init", "--store", store.url)
    assert r.returncode == X.EXIT_CONFIG and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert {o.key for o in store.backend().list("")} == before  # nothing written, nothing lost
    r = store.cli("store", "gc", "--store", store.url)
    assert r.returncode == X.EXIT_CONFIG and "per job" in r.stderr


def test_a_jobs_own_gc_never_deletes_a_shared_chunk(store, tmp_path):
    s = dedup(store)
    app = os.urandom(MB)
    fill(tmp_path / "a", app, b"a")
    fill(tmp_path / "b", app, b"b")
    commit_once(s, "a", tmp_path / "a")
    commit_once(s, "b", tmp_path / "b")
    repo = JobRepo(s.backend(), "a", keep=1)
    repo.claim()
    ws = repo.workspace(str(tmp_path / "a2"), racy=0, chunk_size=256 * 1024)
    repo.restore(ws)
    fill(tmp_path / "a2", os.urandom(MB), b"a, new")  # a no longer uses the application
    repo.commit(ws, ws.snapshot())
    ws.close()
    out = repo.gc(0.0, repo.retained)
    assert out["manifests"] == 1 and out["chunks"] == 0
    assert [e for _, e, _ in JobRepo(s.backend(), "b").verify()] == [None]


def test_a_chunk_that_vanished_before_publishing_is_sent_again(store, tmp_path):
    s = dedup(store)
    app = os.urandom(MB)
    fill(tmp_path / "a", app, b"a")
    commit_once(s, "a", tmp_path / "a")
    fill(tmp_path / "b", app, b"b")
    repo = JobRepo(s.backend(), "b")
    repo.claim()
    ws = repo.workspace(str(tmp_path / "b"), racy=0, chunk_size=256 * 1024)
    snap = ws.snapshot()  # the application's chunks are found in the store, not sent
    assert snap.stats.transferred < 1024
    victim = next(o.key for o in s.backend().list(SHARED_CHUNK_ROOT))
    s.backend().delete(victim)  # as a gc pass with a too short grace would, between upload and publish
    with pytest.raises(IntegrityError, match="gone from the store"):
        repo.commit(ws, snap)
    assert repo.head().generation == 0, "nothing published"
    snap = ws.snapshot()
    repo.commit(ws, snap)
    assert 0 < snap.stats.transferred < 300 * 1024  # the lost chunk (and only it) sent again
    ws.close()
    assert s.backend().exists(victim)
    assert [e for _, e, _ in JobRepo(s.backend(), "b").verify()] == [None]


def test_a_commit_waits_for_a_gc_pass_and_one_pass_runs_at_a_time(store, tmp_path, monkeypatch):
    s = dedup(store)
    fill(tmp_path / "a", os.urandom(MB), b"a")
    repo = JobRepo(s.backend(), "a")
    repo.claim()
    ws = repo.workspace(str(tmp_path / "a"), racy=0)
    monkeypatch.setattr(shared, "COMMIT_WAIT", 1.0)
    with shared.PassLease(s.backend(), shared.store_config(s.backend())):
        r = s.cli("store", "gc", "--store", s.url, "--grace", "0")
        assert r.returncode == X.EXIT_TEMPFAIL, r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip().splitlines()[0]]
        assert "another store gc pass holds the store" in r.stderr
        with pytest.raises(shared.GcBusy):
            repo.commit(ws, ws.snapshot())
        assert repo.head().generation == 0
    assert [o.key for o in s.backend().list("gc/")] == []  # the lease went with the pass
    repo.commit(ws, ws.snapshot())
    ws.close()
    assert repo.head().generation == 1


def test_purge_and_gc_keep_the_others_and_empty_the_store(store, tmp_path):
    s = dedup(store)
    app = os.urandom(MB)
    for i in range(3):
        fill(tmp_path / ("w%d" % i), app, os.urandom(100 * 1024))
        commit_once(s, "j%d" % i, tmp_path / ("w%d" % i))
    for i in range(2):
        JobRepo(s.backend(), "j%d" % i).retire()
        JobRepo(s.backend(), "j%d" % i).purge()
    out = gc(s)
    assert out["deleted"] >= 2 and out["jobs"] == 1
    assert restore_to(s, "j2", tmp_path / "r2") == digest_tree(tmp_path / "w2")
    JobRepo(s.backend(), "j2").retire()
    JobRepo(s.backend(), "j2").purge()
    r = s.cli("store", "gc", "--store", s.url, "--grace", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deleted"] > 0
    left = sorted(o.key for o in s.backend().list(""))
    tombstones = sorted(Layout("j%d" % i).log_dir for i in range(3))
    assert STORE_CONFIG in left and len(left) == 4, left
    assert sorted(k.rsplit("/", 1)[0] + "/" for k in left if k != STORE_CONFIG) == tombstones  # one removal record each


def test_the_wrapper_shares_chunks(s3store, tmp_path):
    """Two real wrappers (persistjob run) with a ?dedup=store URL: the second one stores its own data only."""
    s = Store("s3", s3store.url + "?dedup=store", s3store.env, s3store.server)
    app = os.urandom(4 * MB)
    grew = []
    for name in ("w1", "w2"):
        ck = tmp_path / name
        fill(ck, app, os.urandom(1000))
        before = stored(s, SHARED_CHUNK_ROOT)
        r = s.cli("run", "--job-id", job_id(), "--store", s.url, "--checkpoint-dir", str(ck), "--lifetime", "1s",
                  "--", sys.executable, COUNTER, "--quiet", timeout=300)
        assert r.returncode == X.EXIT_CHECKPOINTED, r.stderr
        grew.append(stored(s, SHARED_CHUNK_ROOT) - before)
    assert grew[0] > 4 * MB and grew[1] < 64 * 1024, grew
    assert json.loads(s.backend().get(STORE_CONFIG))["dedup"] == "store"


def test_gc_in_a_loop_against_concurrent_commits(s3store, tmp_path):
    """Six jobs commit for a minute on SeaweedFS, each generation one of twenty application versions (so
    versions fall out of use and are taken up again: a commit finds chunks that no manifest references
    any more), pausing at random between upload and publish; each job's own gc runs with no grace;
    store gc passes run one after another, every other one with no grace, the others sparing 30 s.  Before each commit a job checks that every
    chunk of its retained generations is still there (a generation stays retained for two more
    commits: a chunk deleted under it is the failure this protocol exists to prevent), and at the end
    every retained generation restores intact, byte for byte what was committed.  Commits that find a
    chunk of theirs deleted before they publish (a pass with no grace took an upload that waited for its
    manifest) are not published, and counted."""
    s = dedup(s3store, window=2.0, lease=30.0)
    print("gc race:", race(s, tmp_path))


def race(s: Store, tmp_path, seconds: float = 60.0) -> dict:
    versions = [os.urandom(2 * 128 * 1024) for _ in range(20)]
    stop = threading.Event()
    published = {}  # (job, generation) -> file digests
    counts = {"commits": 0, "busy": 0, "vanished": 0, "passes": 0, "deleted": 0}
    errors = []
    lock = threading.Lock()
    backends = [retrying(s) for _ in range(7)]  # made here: Store.backend() sets the environment for a moment

    def job(n: int) -> None:
        rnd = random.Random(n)
        jid = "race-%d" % n
        path = tmp_path / jid
        repo = JobRepo(backends[n], jid, keep=2)
        repo.claim()
        ws = repo.workspace(str(path), racy=0, chunk_size=128 * 1024)
        try:
            while not stop.is_set():
                for gen, mid in repo.retained:
                    entries, _ = repo.manifest(mid)
                    gone = [h for e in entries for h, _ in e.chunks if not backends[n].exists(Layout.shared_chunk(h))]
                    if gone:
                        errors.append("%s: generation %d lost chunk %s while retained" % (jid, gen, gone[0][:12]))
                repo.before_snapshot()
                fill(path, rnd.choice(versions), os.urandom(8 * 1024))
                snap = ws.snapshot()
                time.sleep(rnd.uniform(0, 2))  # a gc pass may run between the upload and the publish
                try:
                    rec = repo.commit(ws, snap)
                except shared.GcBusy:
                    with lock:
                        counts["busy"] += 1
                    continue
                except IntegrityError:
                    with lock:
                        counts["vanished"] += 1
                    continue
                with lock:
                    published[(jid, rec.generation)] = digest_tree(path)
                    counts["commits"] += 1
                repo.gc_as_owner(0.0)
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append("%s: %r" % (jid, exc))
        finally:
            ws.close()

    def collector() -> None:
        b = backends[6]
        try:
            while not stop.is_set():
                grace = 0.0 if counts["passes"] % 2 else 30.0
                out = shared.store_gc(b, grace, lambda j: JobRepo(b, j).live_chunks())
                with lock:
                    counts["passes"] += 1
                    counts["deleted"] += out["deleted"]
                time.sleep(random.uniform(1, 4))  # commits wait while a pass runs: let them through
        except Exception as exc:  # noqa: BLE001
            errors.append("gc: %r" % (exc,))

    threads = [threading.Thread(target=job, args=(n,)) for n in range(6)] + [threading.Thread(target=collector)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=300)
    assert not errors, (errors, counts)
    assert counts["passes"] >= 3 and counts["deleted"] > 0 and counts["commits"] >= 12, counts
    b = retrying(s)
    shared.store_gc(b, 0.0, lambda j: JobRepo(b, j).live_chunks())  # one more pass after the last commits
    for n in range(6):
        jid = "race-%d" % n
        repo = JobRepo(b, jid)
        assert [e for _, e, _ in repo.verify()] == [None] * len(repo.head().retained), jid
        for gen, _ in repo.head().retained:
            dest = tmp_path / ("check-%s-%d" % (jid, gen))
            ws = repo.workspace(str(dest))
            try:
                assert repo.restore(ws, gen, fallback=False).generation == gen
            finally:
                ws.close()
            assert digest_tree(dest) == published[(jid, gen)], (jid, gen)
    return counts


def test_fifty_jobs_sharing_a_50_mb_application(s3store, tmp_path):
    """Issue 15's figures on SeaweedFS: 50 jobs, each the same 50 MB application plus 1 MB of its own,
    store less than 1.2 x (50 MB + 50 x 1 MB); purging 49 and a gc pass keep the 50th restorable byte for
    byte; purging all and gc --grace 0 leave no chunk, manifest, run or registration (only store.json
    and each job's removal record, the tombstone rm --purge keeps)."""
    s = dedup(s3store, window=10.0, lease=60.0)  # W/2 = 5 s for a commit's checks, with four committing at once
    figures = fifty_jobs(s, tmp_path)
    print("fifty jobs:", figures)
    assert figures["stored"] < 1.2 * (50 * MB + 50 * MB), figures
    r = s.cli("store", "gc", "--store", s.url, "--grace", "0", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    left = [o.key for o in s.backend().list("")]
    assert STORE_CONFIG in left and len(left) == 51, sorted(left)[:5]
    assert all(k == STORE_CONFIG or Layout.name(k).isdigit() for k in left), left  # removal records only


def fifty_jobs(s: Store, tmp_path, jobs: int = 50, app_mb: int = 50, own_mb: int = 1, store_gc: bool = True) -> dict:
    """Commit ``jobs`` jobs (app + own), purge all but the last, gc (``store_gc``: a shared store),
    restore the last; then purge it too.  Returns bytes stored after the commits and what the steps
    did (also used by benchmarks/dedup_bench.py, which runs it on a per-job store beside)."""
    from concurrent.futures import ThreadPoolExecutor

    app = tmp_path / "app.bin"
    with open(app, "wb") as f:
        f.write(os.urandom(app_mb * MB))
    backends = [retrying(s) for _ in range(4)]

    def one(i: int) -> int:
        path = tmp_path / ("job%d" % i)
        os.makedirs(path)
        os.link(app, path / "app.bin")  # the same bytes in every job's directory
        with open(path / "own.bin", "wb") as f:
            f.write(os.urandom(own_mb * MB))
        repo = JobRepo(backends[i % 4], "fifty-%d" % i)
        repo.claim()
        ws = repo.workspace(str(path), racy=0)
        try:
            snap = ws.snapshot()
            repo.commit(ws, snap)
        finally:
            ws.close()
        repo.end_run(X.EXIT_CHECKPOINTED, "figures")
        return snap.stats.transferred

    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        sent = list(pool.map(one, range(jobs)))
    seconds = time.monotonic() - t0
    b = retrying(s)
    stored_bytes = stored(s)
    for i in range(jobs - 1):
        JobRepo(b, "fifty-%d" % i).retire()
        JobRepo(b, "fifty-%d" % i).purge()
    out = shared.store_gc(b, 0.0, lambda j: JobRepo(b, j).live_chunks()) if store_gc else {"deleted": 0}
    last = "fifty-%d" % (jobs - 1)
    assert restore_to(s, last, tmp_path / "restored") == digest_tree(tmp_path / ("job%d" % (jobs - 1)))
    after_gc = stored(s)
    JobRepo(b, last).retire()
    JobRepo(b, last).purge()
    return {"stored": stored_bytes, "uploaded": sum(sent), "first_job_uploaded": sent[0],
            "commit_seconds": round(seconds, 1), "gc_deleted": out["deleted"], "stored_after_gc": after_gc}
