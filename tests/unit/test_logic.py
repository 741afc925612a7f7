"""Pure logic: identity, keys, durations, records, manifests, chunk codec, retention, exit codes."""

import hashlib
import json
import os

import pytest

from persistjob.repo.layout import Layout

from persistjob import contract as C
from persistjob import errors as E
from persistjob.codec import Entry, decode_chunk, decode_manifest, encode_chunk, encode_manifest
from persistjob.repo import EMPTY, Record, job_key, retained_after
from persistjob.identity import parse_duration, parse_size, read_classad_attr, resolve_job_id
from persistjob.storage import check_key, get_backend
from persistjob.storage.s3 import classify_s3_error


@pytest.mark.parametrize("text,secs", [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("2d", 172800),
                                       ("1.5s", 1.5), ("1h", 3600)])
def test_durations(text, secs):
    assert parse_duration(text) == secs


@pytest.mark.parametrize("bad", ["", "soon", "1x", "-5", "h"])
def test_bad_durations(bad):
    with pytest.raises(E.ConfigError, match="invalid duration"):
        parse_duration(bad)


def test_sizes():
    assert parse_size("512k") == 512 << 10 and parse_size("1M") == 1 << 20 and parse_size("4096") == 4096
    with pytest.raises(E.ConfigError):
        parse_size("big")


def test_identity_order(tmp_path):
    ad = tmp_path / ".job.ad"
    ad.write_text('ClusterId = 4\nGlobalJobId = "submit.example#4.0#1700000000"\nCmd = "/bin/x"\n')
    env = {"_CONDOR_JOB_AD": str(ad), "PERSISTJOB_JOB_ID": "wq#7"}
    assert resolve_job_id("explicit#1", env) == "explicit#1"
    assert resolve_job_id(None, env) == "submit.example#4.0#1700000000"
    assert resolve_job_id(None, {"PERSISTJOB_JOB_ID": "wq#7"}) == "wq#7"
    assert resolve_job_id(None, {"_CONDOR_JOB_AD": str(tmp_path / "missing"), "PERSISTJOB_JOB_ID": "wq#7"}) == "wq#7"
    with pytest.raises(E.ConfigError, match="no job ID"):
        resolve_job_id(None, {})
    with pytest.raises(E.ConfigError, match="invalid job ID"):
        resolve_job_id("bad\nid", {})


def test_classad_string_escapes(tmp_path):
    ad = tmp_path / "ad"
    ad.write_text('Name = "slot1@host"\nQuoted = "a \\"b\\" c"\nNum = 42\n')
    assert read_classad_attr(str(ad), "name") == "slot1@host"
    assert read_classad_attr(str(ad), "Quoted") == 'a "b" c'
    assert read_classad_attr(str(ad), "Num") == "42"
    assert read_classad_attr(str(ad), "Missing") is None


def test_job_key_is_sha256_of_id():
    assert job_key("host#1.0#123") == hashlib.sha256(b"host#1.0#123").hexdigest()


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", "a/../b", "", "a b", ".tmp-x/y", "a/.tmp-1"])
def test_unsafe_keys(key):
    with pytest.raises(ValueError):
        check_key(key)


def test_safe_keys():
    assert check_key("abc/log/000000000001") == "abc/log/000000000001"


@pytest.mark.parametrize("url,msg", [("nope", "malformed"), ("s3:/x", "malformed"), ("ftp://h/x", "unsupported"),
                                     ("file://relative/x", "file:///absolute"), ("s3://Bad_Bucket/x", "bad bucket"),
                                     ("s3://bucket/x?secret_key=abc", "secrets do not belong"),
                                     ("s3://bucket/x?colour=red", "unknown URL parameter"),
                                     ("s3://bucket/x?addressing=sideways", "addressing"),
                                     ("file:///tmp/x?fsync=0&bogus=1", "unknown URL parameter"),
                                     ("root://127.0.0.1:1//x?bogus=1", "unknown URL parameter"),
                                     ("root://127.0.0.1:1//x?checksum_slots=0", "checksum_slots must be a positive"),
                                     ("root:///nohost", "no host"), ("gopher://h/x", "unsupported")])
def test_bad_urls(url, msg):
    with pytest.raises(E.InvalidURL, match=msg):
        get_backend(url)


@pytest.mark.parametrize("url,msg", [("AKIAXX:s3cr3tpw@host/p?token=t0k3n", "expected scheme://"),
                                     ("S3://AKIAXX:s3cr3tpw@b/p?token=t0k3n", "bad scheme"),
                                     ("s3://AKIAXX:s3cr3tpw@bucket/p?token=t0k3n", "bad bucket name"),
                                     ("s3://bucket/../p?token=t0k3n", "bad prefix"),
                                     ("file://u:s3cr3tpw@host/p?token=t0k3n", "use file:///absolute/path"),
                                     ("root://u:s3cr3tpw@/p?token=t0k3n", "no host")])
def test_a_malformed_url_is_shown_without_its_secrets(url, msg):
    """The user part and the query of a URL may hold secrets: a malformed URL's error shows neither."""
    with pytest.raises(E.InvalidURL, match=msg) as err:
        get_backend(url)
    text = str(err.value)
    assert "s3cr3tpw" not in text and "t0k3n" not in text and "AKIAXX" not in text, text
    assert "'" in text, "the URL is still named (masked), so that the user knows which"


def test_s3_url_params_and_no_secret_in_repr():
    b = get_backend("s3://bucket/some/prefix?endpoint=http://127.0.0.1:1&region=eu-west-1&addressing=path")
    assert b.bucket == "bucket" and b.prefix == "some/prefix/"
    assert b.url == "s3://bucket/some/prefix/"
    assert b.client.meta.region_name == "eu-west-1"
    assert b.client.meta.endpoint_url == "http://127.0.0.1:1"


@pytest.mark.parametrize("code,status,cls", [
    ("PreconditionFailed", 412, E.ObjectExists),
    ("NoSuchKey", 404, E.ObjectNotFound),
    ("404", 404, E.ObjectNotFound),
    ("NoSuchBucket", 404, E.StorageConfigError),
    ("ConditionalRequestConflict", 409, E.StorageUnavailable),
    ("SlowDown", 503, E.StorageUnavailable),
    ("InternalError", 500, E.StorageUnavailable),
    ("TooManyRequests", 429, E.StorageUnavailable),
    ("RequestTimeout", 400, E.StorageUnavailable),
    ("AccessDenied", 403, E.StorageConfigError),
    ("InvalidAccessKeyId", 403, E.StorageConfigError),
    ("SignatureDoesNotMatch", 403, E.StorageConfigError),
    ("InvalidArgument", 400, E.StorageConfigError),
])
def test_s3_error_classification(code, status, cls):
    err = classify_s3_error(code, status, "k")
    assert type(err) is cls
    assert isinstance(err, E.StorageUnavailable) == (cls is E.StorageUnavailable)


def test_exit_codes_of_error_classes():
    assert E.ConfigError("x").exit_code == C.EXIT_CONFIG == 78
    assert E.InvalidURL("x").exit_code == 78 and E.UnsafeManifest("x").exit_code == 78
    assert E.StorageConfigError("x").exit_code == 78
    assert E.TryLater("x").exit_code == C.EXIT_TEMPFAIL == 75
    assert E.Fenced("x").exit_code == 75 and E.StorageUnavailable("x").exit_code == 75
    assert (C.EXIT_DONE, C.EXIT_CHECKPOINTED, C.EXIT_CRASHLOOP) == (0, 85, 79)
    assert E.ConfigError().message == "bad configuration or input"


def test_record_round_trip_and_validation():
    rec = Record(7, "commit", 3, 5, "a" * 64, ((5, "a" * 64), (4, "b" * 64)), 0, {"files": 2, "time": 1.5})
    back = Record.from_bytes(rec.to_bytes(), 7)
    assert back == rec
    with pytest.raises(E.IntegrityError):
        Record.from_bytes(rec.to_bytes(), 8)  # stored under another sequence number
    with pytest.raises(E.IntegrityError):
        Record.from_bytes(b"{not json", 1)
    bad = json.loads(rec.to_bytes())
    bad["manifest"] = "../../etc"
    with pytest.raises(E.IntegrityError):
        Record.from_bytes(json.dumps(bad).encode(), 7)
    assert EMPTY.seq == 0 and EMPTY.run == 0


def test_retention():
    r = retained_after((5, "e"), [(4, "d"), (3, "c"), (2, "b")], 3)
    assert r == ((5, "e"), (4, "d"), (3, "c"))
    assert retained_after((5, "e"), [(4, "d"), (3, "c")], 3, drop=["d"]) == ((5, "e"), (3, "c"))
    assert retained_after((1, "a"), [], 0) == ((1, "a"),)


@pytest.mark.parametrize("codec,byte", [("zlib", b"\x02"), ("zstd", b"\x01")])
def test_chunk_codec(codec, byte):
    text = b"abc" * 100000
    blob = encode_chunk(text, codec)
    assert blob[:1] == byte and len(blob) < len(text) // 10
    rnd = os.urandom(100000)
    blob2 = encode_chunk(rnd, codec)
    assert blob2[:1] == b"\x00" and len(blob2) == len(rnd) + 1
    assert decode_chunk(blob, hashlib.sha256(text).hexdigest(), len(text)) == text
    with pytest.raises(E.IntegrityError):
        decode_chunk(blob2[:-1] + bytes([blob2[-1] ^ 1]), hashlib.sha256(rnd).hexdigest(), len(rnd))
    with pytest.raises(E.IntegrityError):
        decode_chunk(b"\x07junk", "0" * 64, 4)
    with pytest.raises(E.IntegrityError):  # a bomb that decompresses past its declared size
        decode_chunk(blob, hashlib.sha256(text).hexdigest(), 10)
    with pytest.raises(E.IntegrityError):  # a truncated stream
        decode_chunk(blob[:-7], hashlib.sha256(text).hexdigest(), len(text))


def test_zstd_data_without_zstandard_is_a_clear_configuration_error(monkeypatch):
    """Where zstandard is missing, zlib is written and read; zstd data is refused with what to do,
    never taken for damage (which would fall back to an older generation)."""
    import sys

    from persistjob import codec

    text = b"state " * 50000
    zstd_blob = encode_chunk(text, "zstd")
    mblob = encode_manifest([], {"created": 0}, "zstd")
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard -> ImportError
    monkeypatch.setattr(codec, "_tls", type(codec._tls)())
    assert decode_chunk(encode_chunk(text, "zlib"), hashlib.sha256(text).hexdigest(), len(text)) == text
    with pytest.raises(E.ConfigError, match="needs the zstandard module.*--codec zlib"):
        decode_chunk(zstd_blob, hashlib.sha256(text).hexdigest(), len(text))
    with pytest.raises(E.ConfigError, match="needs the zstandard module"):
        decode_manifest(mblob, hashlib.sha256(mblob).hexdigest())
    with pytest.raises(E.ConfigError, match="writing with --codec zstd"):
        codec.check_codec("zstd")
    assert codec.check_codec("zlib") == "zlib"


def _manifest(entries):
    blob = encode_manifest(entries, {"created": 0})
    return blob, hashlib.sha256(blob).hexdigest()


def test_manifest_round_trip():
    h = "ab" * 32
    entries = [Entry("d", "d", 0o755, 0, 1), Entry("d/f", "f", 0o644, 10, 2, ((h, 6), (h, 4))),
               Entry("d/l", "l", 0o777, 0, 3, target="f")]
    blob, mid = _manifest(entries)
    back, meta = decode_manifest(blob, mid)
    assert back == entries and meta["created"] == 0
    with pytest.raises(E.IntegrityError):
        decode_manifest(blob, "0" * 64)


H = "cd" * 32


@pytest.mark.parametrize("entries,msg", [
    ([Entry("../x", "f", 0o644, 0, 0)], "unsafe path"),
    ([Entry("/etc/passwd", "f", 0o644, 0, 0)], "unsafe path"),
    ([Entry("a/../../x", "f", 0o644, 0, 0)], "unsafe path"),
    ([Entry("l", "l", 0o777, 0, 0, target="/etc")], "outside"),
    ([Entry("l", "l", 0o777, 0, 0, target="../..")], "outside"),
    ([Entry("d", "d", 0o755, 0, 0), Entry("d/l", "l", 0o777, 0, 0, target="../../x")], "outside"),
    ([Entry("l", "l", 0o777, 0, 0, target="."), Entry("l/x", "f", 0o644, 0, 0)], "through symlink"),
    ([Entry("dev", "c", 0o644, 0, 0)], "not allowed"),
    ([Entry("f", "f", 0o644, 0, 0), Entry("f", "f", 0o644, 0, 0)], "duplicate"),
    ([Entry("f", "f", 0o644, 5, 0, ((H, 4),))], "bad chunk list"),
    ([Entry("f", "f", 0o644, 4, 0, (("zz", 4),))], "bad chunk list"),
    ([Entry("a/f", "f", 0o644, 0, 0)], "before its directory"),
])
def test_unsafe_manifests(entries, msg):
    blob, mid = _manifest(entries)
    with pytest.raises(E.UnsafeManifest, match=msg):
        decode_manifest(blob, mid)


def test_setuid_bits_are_dropped():
    blob, mid = _manifest([Entry("f", "f", 0o4755, 0, 0)])
    entries, _ = decode_manifest(blob, mid)
    assert entries[0].mode == 0o755


def test_newer_format_is_refused_not_skipped():
    rec = json.loads(Record(1, "claim", 1, 0, None, (), 0, {}).to_bytes())
    rec["v"] = 99
    with pytest.raises(E.ConfigError, match="upgrade persistjob"):
        Record.from_bytes(json.dumps(rec).encode(), 1)


@pytest.mark.parametrize("msg,trusted", [
    ("Result (Neon): Server certificate verification failed: issuer is not trusted after 1 attempts", False),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)", False),
    ("Hostname mismatch, certificate is not valid for 'x'", False),
    ("Server certificate verification failed: certificate has expired", False),
    ("Connection refused", True), ("No such file or directory", True), ("Checksum does not match", True)])
def test_untrusted_server_certificate_is_a_configuration_error(msg, trusted):
    from persistjob.storage.base import tls_trust_error

    err = tls_trust_error("davs://se.example:443/store", msg, "set X509_CERT_DIR")
    assert (err is None) == trusted
    if err is not None:
        assert err.exit_code == 78 and "davs://se.example:443/store" in err.message and "X509_CERT_DIR" in err.message


def test_fenced_notes_since_skips_old_notes_unread(tmp_path):
    from persistjob.repo.log import JobLog

    b = get_backend("file://%s" % tmp_path)
    now = [1_000_000.0]
    joblog = JobLog(b, "job#fence", clock=lambda: now[0])
    joblog.note_fenced(3, "old refusal")
    now[0] += 3 * 86400
    joblog.note_fenced(9, "new refusal")
    assert sorted(n["claim_seq"] for n in joblog.fenced_notes()) == [3, 9]
    reads = []
    real_get = b.get
    b.get = lambda key: reads.append(key) or real_get(key)
    recent = joblog.fenced_notes(since=now[0] - 86400)
    assert [n["why"] for n in recent] == ["new refusal"] and len(reads) == 1


def test_no_instance_metadata_lookup_unless_asked(monkeypatch, tmp_path):
    """botocore would ask 169.254.169.254 for credentials when it finds none: never, unless the
    environment says AWS_EC2_METADATA_DISABLED=false (a job on an EC2 instance with a role)."""
    import socket

    from persistjob.credentials import botocore_session
    from persistjob.storage.s3 import make_client

    for k in ("AWS_EC2_METADATA_DISABLED", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
              "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
              "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws
    tried = []
    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: tried.append(addr) or real_connect(self, addr))
    methods = [p.METHOD for p in botocore_session().get_component("credential_provider").providers]
    assert "iam-role" not in methods and "env" in methods
    client = make_client("http://127.0.0.1:1", "us-east-1")
    assert client._request_signer._credentials is None and tried == []  # no credentials, and nobody was asked
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "false")
    assert "iam-role" in [p.METHOD for p in botocore_session().get_component("credential_provider").providers]


def test_an_adopted_child_reports_its_own_exit_status():
    """A tree criu restored is our child but no Popen: Adopted gives Popen's poll/wait with the real status."""
    import os
    import signal
    import subprocess

    from persistjob.worker.payload import Adopted

    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 7"], dict(os.environ))
    assert Adopted(pid).wait(timeout=30) == 7
    pid = os.posix_spawn("/bin/sleep", ["sleep", "30"], dict(os.environ))
    child = Adopted(pid)
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.1)
    os.kill(pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL and child.poll() == -signal.SIGKILL


def _racing_backend(tmp_path, racer_kinds):
    """A file store where, before each of the first claims' creates of the next record, another
    instance writes a record of the given kind there first."""
    from persistjob.repo.log import JobLog

    b = get_backend("file://%s" % tmp_path)
    other = JobLog(get_backend("file://%s" % tmp_path), "job#race")
    real = b.put_if_absent
    pending = list(racer_kinds)

    def put_if_absent(key, data):
        if pending and "/log/" in key:
            other.append(other.head(), pending.pop(0))
        return real(key, data)
    b.put_if_absent = put_if_absent
    return b, other


def test_a_claim_that_loses_to_the_old_owners_commit_takes_over(tmp_path):
    """The scheduler started this instance: a commit by the instance it replaces is no reason to give up."""
    from persistjob.repo import JobRepo

    b, other = _racing_backend(tmp_path, [])
    other.append(other.head(), "claim", run=1)
    b2, _ = _racing_backend(tmp_path, ["commit", "commit"])
    repo = JobRepo(b2, "job#race")
    repo.check_fencing = lambda: None
    mine = repo.claim()
    assert (mine.kind, mine.seq, mine.run, mine.lost) == ("claim", 4, 2, 1)


def test_a_claim_that_loses_to_another_claim_is_fenced(tmp_path):
    from persistjob.repo import JobRepo

    b, _ = _racing_backend(tmp_path, ["claim"])
    repo = JobRepo(b, "job#race")
    repo.check_fencing = lambda: None
    with pytest.raises(E.Fenced):
        repo.claim()


def _counted(b):
    """Record the key of every get and every listing's prefix of a backend (our own logic under test)."""
    seen = []
    real_get, real_list = b.get, b.list
    b.get = lambda key: seen.append(("get", key)) or real_get(key)
    b.list = lambda prefix, start_after=None: seen.append(("list", prefix)) or real_list(prefix, start_after)
    return seen


def test_the_log_head_search_starts_at_the_summary_and_never_trusts_it_ahead(tmp_path):
    """The summary names the newest record's state in its key: head() lists it, lists the log from
    there and reads the newest record (three requests, however long the log); older summaries are
    deleted by the next append.  Behind the log, head() finds the newer record; ahead of it (a
    store purged and reused) or not a summary's name, it is ignored."""
    from persistjob.repo import summary_index
    from persistjob.repo.layout import Summary
    from persistjob.repo.log import JobLog

    b = get_backend("file://%s" % tmp_path)
    joblog = JobLog(b, "job#summary", clock=lambda: 1000.0)
    head = joblog.head()
    for g in range(1, 6):
        mid = "%064x" % g
        head = joblog.append(head, "commit", generation=g, manifest=mid, retained=((g, mid),), data={"bytes": g})
    head = joblog.append(head, "end", crash_streak=2)
    assert head.committed == {"time": 1000.0, "seconds": 0, "bytes": 5, "generation": 5}
    assert list(summary_index(b).values()) == [Summary(6, "end", 0, 5, 2, 0, head.committed)]
    seen = _counted(b)
    assert JobLog(b, "job#summary").head() == head and [k for k, _ in seen] == ["list", "list", "get"]
    assert seen[1] == ("list", joblog.keys.log_dir)
    behind = joblog.keys.summary(Summary(3, "commit", 0, 3, 0, 0, None))
    b.put(behind, b"x")  # an older instance's summary that landed late
    assert JobLog(b, "job#summary").summary().seq == 6 and joblog.head() == head
    b.delete_many([k for k in (o.key for o in b.list(joblog.keys.summary_dir)) if k != behind])
    assert joblog.head() == head  # only the stale one left: the log listing from it finds record 6
    b.put(joblog.keys.summary(Summary(9, "claim", 0, 5, 0, 0, None)), b"x")  # ahead of the log
    b.put(joblog.keys.summary_dir + "not-a-summary", b"x")
    assert joblog.head() == head
    later = JobLog(b, "job#summary")
    rec = later.append(later.head(), "claim", run=1)  # deletes every summary it saw
    assert [Layout.name(o.key).split(".")[0] for o in b.list(joblog.keys.summary_dir)] == ["%012d" % rec.seq]


def test_fenced_notes_live_under_one_store_wide_prefix_and_old_ones_are_still_read(tmp_path):
    from persistjob.repo import JobRepo, fenced_index

    b = get_backend("file://%s" % tmp_path)
    now = [2_000_000.0]
    a, other = JobRepo(b, "job#a", clock=lambda: now[0]), JobRepo(b, "job#b", clock=lambda: now[0])
    a.log.note_fenced(1, "refused")
    other.log.note_fenced(2, "refused")
    b.put(a.keys.old_fenced_dir + "1999000-7", json.dumps({"time": 1_999_000.0, "why": "old place"}).encode())
    assert fenced_index(b, 0) == {a.key: [2_000_000.0], other.key: [2_000_000.0]}
    assert fenced_index(b, 2_000_001) == {}
    assert sorted(n["why"] for n in a.fenced_notes()) == ["old place", "refused"]
    a.retire()
    a.purge()
    assert fenced_index(b, 0) == {other.key: [2_000_000.0]}
    assert a.fenced_notes() == []


# ---------------------------------------------------------------- shared stores (?dedup=store)


def test_our_url_parameters_are_taken_out_and_checked():
    from persistjob.errors import InvalidURL
    from persistjob.storage import _our_params

    assert _our_params("s3://b/p?dedup=store&fencing=unsafe&x=1") == ("s3://b/p?x=1", {"dedup": "store", "fencing": "unsafe"})
    assert _our_params("file:///d") == ("file:///d", {})
    with pytest.raises(InvalidURL, match="dedup=yes: the value is one of store, job"):
        _our_params("s3://b/p?dedup=yes")


def test_a_malformed_store_config_is_an_integrity_error():
    from persistjob.errors import IntegrityError
    from persistjob.repo.shared import StoreConfig

    assert StoreConfig.from_bytes(b'{"dedup": "store"}') == StoreConfig(True)
    assert StoreConfig.from_bytes(StoreConfig(True, 10, 20).to_bytes()) == StoreConfig(True, 10.0, 20.0)
    for bad in (b"", b"[]", b'{"dedup": "yes"}', b'{"dedup": "store", "window": 0}', b'{"dedup": "store", "lease": "x"}'):
        with pytest.raises(IntegrityError, match="store.json"):
            StoreConfig.from_bytes(bad)


def test_a_commit_record_is_not_retried_after_the_window():
    from persistjob.repo.shared import no_retries_after
    from persistjob.storage import RetryingBackend, get_backend

    b = RetryingBackend(get_backend("file:///nonexistent-pj"), 60)
    with no_retries_after(b, 100.0):
        assert b.deadline == 100.0
    assert b.deadline is None
    b.deadline = 50.0
    with no_retries_after(b, 100.0):
        assert b.deadline == 50.0  # an earlier limit (the final checkpoint's) stands
    assert b.deadline == 50.0
    with no_retries_after(b, None):
        assert b.deadline == 50.0


def test_a_stalled_gc_pass_stops_at_its_next_renewal(tmp_path):
    from persistjob.repo import shared
    from persistjob.storage import get_backend

    store = get_backend("file://%s" % tmp_path)
    cfg = shared.StoreConfig(True, 1.0, 40.0)
    now = [1000.0]
    with shared.PassLease(store, cfg, mono=lambda: now[0]) as lease:
        now[0] += 5
        lease.renew()  # not due yet: a quarter of the lease is 10 s
        assert lease.left() == 35.0
        now[0] += 20
        lease.renew()
        assert lease.left() == 40.0
        with pytest.raises(shared.GcBusy):
            with shared.PassLease(store, cfg):
                pass  # one pass at a time
        now[0] += 41  # stalled past the deadline (SIGSTOP, a swapped-out VM)
        with pytest.raises(shared.GcBusy, match="stalled"):
            lease.renew()
    assert list(store.list("gc/")) == []


def test_compression_is_skipped_when_sending_is_faster_than_compressing():
    from persistjob.checkpoint import Pace
    from persistjob.codec import SAMPLE_BYTES

    p = Pace(workers=8)
    p.cores = 2
    assert not p.worth(0.05, 1e-4)  # a sample that barely compresses: never
    assert p.packed == 0  # nor does it teach the compression rate (random data compresses slower)
    assert p.worth(0.5, 1e-4)  # no upload seen yet: compress
    assert p.packed == SAMPLE_BYTES  # the sample taught the rate
    p.sent, p.send_wall = 400 << 20, 1.0  # the store takes 400 MB/s
    p.packed, p.pack_cpu = 120 << 20, 1.0  # zlib: 120 MB per CPU second, 240 on two cores
    # 0.67 x 240 = 161 MB/s saved, twice that (the margin for what compression saves later) < 400 MB/s: raw
    assert not p.worth(0.67, SAMPLE_BYTES / (120 << 20))
    p.sent, p.send_wall = 100 << 20, 1.0  # a 1 Gb/s WAN link
    assert p.worth(0.67, SAMPLE_BYTES / (120 << 20)) and not p.worth(0.15, SAMPLE_BYTES / (120 << 20))
    text = b"".join(b"%08d text %d\n" % (i, i * 7919 % 1000) for i in range(60000))
    assert p.encode(text, "zlib")[:1] == b"\x02"  # zlib: the sample's own time keeps the rate near 120 MB/s
    p.sent, p.send_wall = 10 << 30, 1.0  # 10 GB/s: compressing never pays
    assert p.encode(text, "zlib")[:1] == b"\x00"  # raw


def test_the_first_compressible_chunk_probes_the_store_and_the_others_wait_for_it():
    import threading

    from persistjob.checkpoint import Pace
    from persistjob.codec import SAMPLE_BYTES

    cpu = SAMPLE_BYTES / (120 << 20)  # zlib at 120 MB per CPU second
    clock = [100.0]
    p = Pace(workers=8, clock=lambda: clock[0])
    p.cores = 2
    assert p.worth(0.67, cpu, live=False)  # spooled, nothing sent yet: compress (the payload is frozen)
    assert not p.worth(0.67, cpu, live=True)  # uploads as it reads: the first goes raw and measures the store
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(p.worth(0.67, cpu, live=True)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not answers  # waits for the probe's upload, not for a timer

    def put() -> None:
        clock[0] += 0.002  # 1 MiB in 2 ms: 524 MB/s, more than twice the 0.67 x 240 MB/s zlib saves

    p.send(put, 1 << 20)
    waiter.join(5)
    assert answers == [False]  # decided on the measured rate: raw
    p.sent, p.send_wall = 10 << 20, 1.0  # 10 MB/s: compress
    assert p.worth(0.67, cpu, live=True)


def test_a_probe_that_fails_or_is_cancelled_releases_the_waiters():
    import threading

    from persistjob.checkpoint import Pace

    for end in ("fail", "abandon"):
        p = Pace(workers=8)
        assert not p.worth(0.5, 1e-4, live=True)  # the probe
        answers = []
        waiter = threading.Thread(target=lambda: answers.append(p.worth(0.5, 1e-4, live=True)))
        waiter.start()
        if end == "fail":
            def put() -> None:
                raise OSError("store down")
            with pytest.raises(OSError):
                p.send(put, 1 << 20)
            assert p.sent == 0  # a failed upload teaches nothing
        else:
            p.abandon()
        waiter.join(5)
        assert answers == [True]  # nothing learnt: compress, as before


def test_a_criu_run_that_never_held_the_nodes_lock_leaves_the_directory_to_its_holder(tmp_path, monkeypatch):
    """The run that holds a job's lock on a node owns its directory there.  A newer run that could not
    take the lock gives way (75, a tidy end), and must not remove what the holder is using; the holder's
    own tidy end does remove it, and leaves the lock file."""
    import fcntl

    from persistjob.errors import TryLater
    from persistjob.worker import modes

    class Clock:  # the waits for the lock pass at once
        now = 0.0

        def monotonic(self):
            return self.now

        def sleep(self, s):
            self.now += s

    monkeypatch.setattr(modes, "time", Clock())
    work = tmp_path / "key" / "work"
    work.mkdir(parents=True)
    (work / "state").write_text("in use")

    def mode():
        m = modes.CriuMode.__new__(modes.CriuMode)
        m.ckdir, m.criu, m._lock = str(work), None, None
        return m

    holder = mode()
    holder.after_claim()
    assert "wrapper=%d" % os.getpid() in (tmp_path / "key" / "lock").read_text()
    newer = mode()
    monkeypatch.setattr(modes, "_descends", lambda pid, ancestor: False)
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)  # the "older wrapper" is this process
    with pytest.raises(TryLater, match="still holds"):
        newer.after_claim()
    newer.release(tidy=True)
    assert (work / "state").read_text() == "in use"
    with open(tmp_path / "key" / "lock") as f:  # still held by the holder
        with pytest.raises(OSError):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.release(tidy=True)
    assert not work.exists() and (tmp_path / "key" / "lock").exists()
