"""The wrapper end to end, through its real entry point, over file:// and real S3."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from persistjob import contract as C
from persistjob.constants import MARKER_NAME
from persistjob.repo import JobRepo
from persistjob.repo.log import JobLog
from tests.conftest import COUNTER, REPO, clean_env, error_lines, job_id, stop_group, storage_down_20s_mid_run, two_wrappers_at_once, wait_for

PY = sys.executable
CHURN = os.path.join(REPO, "tests", "payloads", "churn.py")


def counts(stderr):
    return [int(m) for m in re.findall(r"resuming at count (\d+)", stderr)]


def test_resume_across_three_runs(store):
    r = store.cli("local", "--max-runs", "3", "--name", "resume", "--store", store.url, "--lifetime", "3s",
                  "--interval", "1s", "--", PY, COUNTER)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    c = counts(out)
    assert len(c) == 3 and c[0] == 0 and 0 < c[1] < c[2], c
    gens = [int(g) for g in re.findall(r"restored generation (\d+)", out)]
    assert gens[0] == 0 and 0 < gens[1] < gens[2]
    assert re.findall(r"counter: run (\d+), restored", out) == ["1", "2", "3"]
    for line in ("claim: job local#resume run 3", "restore: generation", "commit: generation", "exit 85 (checkpointed)"):
        assert line in r.stderr
    runs = JobLog(store.backend(), "local#resume").runs()
    assert [x["run"] for x in sorted(runs, key=lambda x: x["run"])] == [1, 2, 3]
    assert all(x["exit_code"] == 85 and x["commits"] >= 1 and x["state"] == "ended" for x in runs)
    # each run's own story is kept with it, whatever the scheduler does with the error file
    for x in runs:
        text = "\n".join(x["log"])
        assert "claim: job local#resume run %d " % x["run"] in text and "commit: generation" in text, text


def test_payload_done_and_exit_code_mode(store):
    r = store.cli("local", "--max-runs", "5", "--name", "ec", "--store", store.url, "--mode", "exit-code",
                  "--lifetime", "30s", "--", PY, COUNTER, "--exit-every", "3", "--finish-at", "10", "--step", "0.05")
    assert r.returncode == 0, r.stderr
    assert "local: job local#ec completed" in r.stderr
    assert "exit 0 (done): payload finished" in r.stderr
    # payload exited 85 every 3 steps: each exit committed and restarted it
    assert len(re.findall(r"commit: generation", r.stderr)) >= 4
    assert counts(r.stdout) == [0, 3, 6, 9]


def test_signal_mode(store, tmp_path):
    ck = tmp_path / "ck"
    p = store.popen("run", "--job-id", "sig#1", "--store", store.url, "--checkpoint-dir", str(ck), "--mode", "signal",
                    "--interval", "1s", "--lifetime", "4s", "--", PY, COUNTER, "--step", "0.05")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 85, err
    assert len(re.findall(r"commit: generation", err)) >= 3
    assert not (ck / MARKER_NAME).exists()


def test_crash_loop_held(store):
    r = store.cli("local", "--max-runs", "6", "--name", "crash", "--retry-delay", "0.1", "--store", store.url,
                  "--crash-limit", "3", "--", PY, COUNTER, "--crash")
    assert r.returncode == C.EXIT_CRASHLOOP, r.stderr
    assert re.findall(r"local: run \d exited (\d+)", r.stderr) == ["1", "1", "79"]
    assert "held: crash loop: payload exited 3; 3 consecutive runs failed" in r.stderr


def test_two_wrappers_at_once(store, tmp_path):
    two_wrappers_at_once(store, tmp_path)


def _consistent_state(path):
    """churn.py writes all files with the same step; a committed state must agree."""
    meta = json.loads((path / "step.json").read_text())
    for i in range(meta["files"]):
        data = (path / ("part%d" % i)).read_bytes()
        assert data[:16] == b"%016d" % meta["step"], "file %d is from another step" % i
    return meta["step"]


def test_sigkill_during_commit_never_breaks_a_generation(store, tmp_path):
    jid = job_id()
    rng = random.Random(1234)
    steps = []
    for trial in range(20):
        p = store.popen("run", "--job-id", jid, "--store", store.url, "--checkpoint-dir", str(tmp_path / "ck"),
                        "--mode", "exit-code", "--lifetime", "60s", "--", PY, CHURN, "--files", "12", "--kb", "256")
        try:
            time.sleep(rng.uniform(0.4, 2.0))
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            stop_group(p)
        dest = tmp_path / ("restored%d" % trial)
        r = store.cli("checkpoint", "restore", "--store", store.url, "--job-id", jid, "--dest", str(dest))
        if "has no committed generation" in r.stderr:
            continue
        assert r.returncode == 0, r.stderr
        steps.append(_consistent_state(dest))
    assert len(steps) >= 15, "most trials should have committed something"
    assert steps == sorted(steps), "committed progress never goes backwards"
    v = store.cli("checkpoint", "verify", "--store", store.url, "--job-id", jid)
    assert v.returncode == 0, v.stdout + v.stderr


def _flip_byte(store, key):
    b = store.backend()
    data = bytearray(b.get(key))
    data[len(data) // 2] ^= 0x40
    b.put(key, bytes(data))


def test_flipped_byte_falls_back_to_previous_generation(store, tmp_path):
    r = store.cli("local", "--max-runs", "2", "--name", "flip", "--store", store.url, "--lifetime", "2s",
                  "--interval", "1s", "--", PY, COUNTER)
    assert r.returncode == 0, r.stderr
    repo = JobRepo(store.backend(), "local#flip")
    joblog = repo.log
    head = joblog.head()
    newest, previous = head.retained[0], head.retained[1]
    new_entries, _ = repo.manifest(newest[1])
    old_entries, _ = repo.manifest(previous[1])
    old_chunks = {h for e in old_entries for h, _ in e.chunks}
    victim = [h for e in new_entries for h, _ in e.chunks if h not in old_chunks][0]
    _flip_byte(store, repo.keys.chunk(victim))
    v = store.cli("checkpoint", "verify", "--store", store.url, "--job-id", "local#flip")
    assert v.returncode == 1 and "DAMAGED" in v.stdout
    # `checkpoint restore` applies the wrapper's rule: fall back, and say so ...
    dest = str(tmp_path / "flip-restored")
    r = store.cli("checkpoint", "restore", "--store", store.url, "--job-id", "local#flip", "--dest", dest)
    assert r.returncode == 0, r.stderr
    assert "generation %d is damaged" % newest[0] in r.stdout and "fell back" in r.stdout
    assert "restored generation %d into" % previous[0] in r.stdout
    # ... or, with --no-fallback, refuse in one line and leave the destination alone
    dest2 = str(tmp_path / "flip-refused")
    r = store.cli("checkpoint", "restore", "--store", store.url, "--job-id", "local#flip", "--dest", dest2,
                  "--no-fallback")
    assert r.returncode == 75 and "generation %d cannot be restored" % newest[0] in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not os.path.exists(dest2)
    r = store.cli("local", "--max-runs", "1", "--name", "flip", "--store", store.url, "--lifetime", "2s",
                  "--interval", "1s", "--", PY, COUNTER)
    assert r.returncode == 0, r.stderr
    assert "generation %d is damaged" % newest[0] in r.stderr and "falling back" in r.stderr
    assert "restored generation %d," % previous[0] in r.stdout
    run3 = [x for x in joblog.runs() if x["run"] == 3][0]
    assert run3["fallbacks"][0]["generation"] == newest[0]
    assert run3["restored_generation"] == previous[0]


def test_sigterm_takes_final_checkpoint(store, tmp_path):
    jid = job_id()
    ck = tmp_path / "ck"
    p = store.popen("run", "--job-id", jid, "--store", store.url, "--checkpoint-dir", str(ck), "--interval", "1h",
                    "--lifetime", "1h", "--vacate-grace", "20s", "--", PY, COUNTER, "--step", "0.05")
    try:
        wait_for(lambda: (ck / "counter.json").exists() and json.loads((ck / "counter.json").read_text())["count"] > 20,
                 30, "progress", proc=p)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        stop_group(p)
    err = p.stderr.read()
    assert rc == C.EXIT_CHECKPOINTED, err
    assert took < 20
    assert "stop: evicted (SIGTERM)" in err and "commit: generation 1" in err
    dest = tmp_path / "r"
    assert store.cli("checkpoint", "restore", "--store", store.url, "--job-id", jid, "--dest", str(dest)).returncode == 0
    assert json.loads((dest / "counter.json").read_text())["count"] > 20


def test_no_process_outlives_the_wrapper(store, tmp_path):
    script = tmp_path / "spawner.sh"
    script.write_text("#!/bin/sh\nsleep 300 &\necho $! > pids\nsetsid sleep 301 &\necho $! >> pids\nexec sleep 302\n")
    script.chmod(0o755)
    ck = tmp_path / "ck"
    p = store.popen("run", "--job-id", job_id(), "--store", store.url, "--checkpoint-dir", str(ck), "--lifetime", "3s",
                    "--", str(script))
    try:
        assert p.wait(timeout=60) == C.EXIT_CHECKPOINTED
    finally:
        stop_group(p)
    dest_pids = [int(x) for x in (ck / "pids").read_text().split()]
    assert len(dest_pids) == 2
    for pid in dest_pids:
        assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z"


# ---------------------------------------------------------------- bad input


def _store_keys(store, summaries=True):
    """Every stored key; without ``summaries`` all but the summaries, which each append replaces by design."""
    from persistjob.repo.layout import SUMMARY_ROOT

    return {o.key for o in store.backend().list("") if summaries or not o.key.startswith(SUMMARY_ROOT)}


def _seed(store, jid, tmp_path):
    r = store.cli("run", "--job-id", jid, "--store", store.url, "--checkpoint-dir", str(tmp_path / "seed"),
                  "--lifetime", "1s", "--", PY, COUNTER)
    assert r.returncode == 85, r.stderr
    return _store_keys(store)


def _assert_one_line_78(r):
    assert r.returncode == C.EXIT_CONFIG, r.stderr
    assert "Traceback" not in r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("persistjob: error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("case", ["no-job-id", "malformed-url", "unknown-scheme", "unwritable-dir", "missing-payload",
                                  "bad-option", "no-payload"])
def test_bad_input_exit_78(store, tmp_path, case):
    jid = job_id()
    before = _seed(store, jid, tmp_path)
    base = ["run", "--job-id", jid, "--store", store.url, "--checkpoint-dir", str(tmp_path / "ck"), "--lifetime", "2s"]
    payload = ["--", PY, COUNTER]
    if case == "no-job-id":
        args = ["run", "--store", store.url, "--checkpoint-dir", str(tmp_path / "ck")] + payload
    elif case == "malformed-url":
        args = ["run", "--job-id", jid, "--store", "s3:/nobucket", "--checkpoint-dir", str(tmp_path / "ck")] + payload
    elif case == "unknown-scheme":
        args = ["run", "--job-id", jid, "--store", "ftp://host/x", "--checkpoint-dir", str(tmp_path / "ck")] + payload
    elif case == "unwritable-dir":
        (tmp_path / "afile").write_text("x")
        args = ["run", "--job-id", jid, "--store", store.url, "--checkpoint-dir", str(tmp_path / "afile" / "ck")] + payload
    elif case == "missing-payload":
        args = base + ["--", "/nonexistent/payload"]
    elif case == "bad-option":
        args = base + ["--interval", "soon"] + payload
    else:
        args = base
    r = store.cli(*args)
    line = _assert_one_line_78(r)
    expect = {"no-job-id": "no job ID", "malformed-url": "malformed store URL", "unknown-scheme": "unsupported store URL",
              "unwritable-dir": "not writable", "missing-payload": "not found", "bad-option": "invalid duration",
              "no-payload": "no payload"}[case]
    assert expect in line
    assert _store_keys(store) == before, "nothing stored may change"


def test_bad_credentials_and_missing_bucket(s3store, tmp_path):
    jid = job_id()
    before = _seed(s3store, jid, tmp_path)
    args = ["run", "--job-id", jid, "--checkpoint-dir", str(tmp_path / "ck"), "--", PY, COUNTER]
    r = s3store.cli(*args[:1], "--store", s3store.url, *args[1:], env={"AWS_SECRET_ACCESS_KEY": "wrong"})
    assert "credentials" in _assert_one_line_78(r)
    r = s3store.cli(*args[:1], "--store", "s3://no-such-bucket-pj/x", *args[1:])
    assert "bucket 'no-such-bucket-pj' does not exist" in _assert_one_line_78(r)
    assert _store_keys(s3store) == before


def test_s3_over_tls_trusted_then_untrusted(tmp_path):
    """A SeaweedFS whose S3 port speaks https with a test CA: trusted through AWS_CA_BUNDLE or ?verify=PATH,
    the job commits; without the CA the run stops at once with exit 78 and one line about the certificate
    (an untrusted server is a configuration problem, not an outage to retry), and nothing stored changes."""
    from tests.conftest import Store
    from tests.servers import SeaweedFS, make_test_ca

    tls = make_test_ca(str(tmp_path / "tls"))
    server = SeaweedFS(str(tmp_path / "weed"), tls=tls).start()
    try:
        bucket = server.make_bucket()
        assert server.endpoint.startswith("https://")
        trusted = Store("s3", "s3://%s/j" % bucket, dict(server.env(), AWS_CA_BUNDLE=tls["ca"]), server)
        jid = job_id()
        before = _seed(trusted, jid, tmp_path)
        by_url = Store("s3", "s3://%s/j?verify=%s" % (bucket, tls["ca"]), server.env(), server)
        r = by_url.cli("checkpoint", "verify", "--store", by_url.url, "--job-id", jid)
        assert r.returncode == 0, r.stdout + r.stderr
        untrusted = Store("s3", "s3://%s/j" % bucket, server.env(), server)
        r = untrusted.cli("run", "--job-id", jid, "--store", untrusted.url, "--checkpoint-dir", str(tmp_path / "ck"),
                          "--storage-timeout", "60s", "--", PY, COUNTER, timeout=60)
        line = _assert_one_line_78(r)
        assert "certificate is not trusted" in line and server.endpoint in line and "AWS_CA_BUNDLE" in line, line
        assert _store_keys(trusted) == before
    finally:
        server.stop()


def test_path_traversal_manifest_refused(store, tmp_path):
    from persistjob.codec import Entry, encode_manifest
    import hashlib

    jid = job_id()
    _seed(store, jid, tmp_path)
    b = store.backend()
    repo = JobRepo(b, jid)
    joblog = repo.log
    evil = encode_manifest([Entry("../escape", "f", 0o644, 0, 0, ())], {"created": 0})
    mid = hashlib.sha256(evil).hexdigest()
    b.put(repo.keys.manifest(mid), evil)
    head = joblog.head()
    joblog.append(head, "commit", generation=head.generation + 1, manifest=mid, retained=((head.generation + 1, mid),) + head.retained)
    before = _store_keys(store, summaries=False)
    ck = tmp_path / "deep" / "ck"
    r = store.cli("run", "--job-id", jid, "--store", store.url, "--checkpoint-dir", str(ck), "--", PY, COUNTER)
    assert "unsafe path '../escape'" in _assert_one_line_78(r)
    assert not (tmp_path / "deep" / "escape").exists() and not (tmp_path / "escape").exists()
    assert before <= _store_keys(store, summaries=False), "nothing stored was deleted"


# ------------------------------------------------------------- storage outages


def test_storage_unreachable_at_start_exits_75(own_seaweed, tmp_path):
    from tests.conftest import Store

    bucket = own_seaweed.make_bucket()
    st = Store("s3", "s3://%s/j" % bucket, own_seaweed.env(), own_seaweed)
    jid = job_id()
    before = _seed(st, jid, tmp_path)
    own_seaweed.stop()
    try:
        t0 = time.monotonic()
        r = st.cli("run", "--job-id", jid, "--store", st.url, "--checkpoint-dir", str(tmp_path / "ck"),
                   "--storage-timeout", "6s", "--", PY, COUNTER)
        took = time.monotonic() - t0
    finally:
        own_seaweed.restart()
    assert r.returncode == C.EXIT_TEMPFAIL, r.stderr
    assert "storage unreachable" in r.stderr and "not starting fresh" in r.stderr and "Traceback" not in r.stderr
    assert "retrying" in r.stderr
    assert 5 < took < 60
    assert not (tmp_path / "ck" / "counter.json").exists(), "the payload never started fresh"
    assert _store_keys(st) == before


def test_storage_down_20s_mid_run(own_seaweed, tmp_path):
    from tests.conftest import Store

    bucket = own_seaweed.make_bucket()
    st = Store("s3", "s3://%s/j" % bucket, own_seaweed.env(), own_seaweed)
    committed = [r for r in storage_down_20s_mid_run(st, own_seaweed, tmp_path) if r.kind == "commit"]
    assert committed[-1].run == 1 and len(committed) >= 3


def test_checkpoint_cli(store, tmp_path):
    r = store.cli("local", "--max-runs", "2", "--name", "cli", "--store", store.url, "--lifetime", "2s",
                  "--interval", "1s", "--keep", "2", "--gc-grace", "0", "--", PY, COUNTER)
    assert r.returncode == 0, r.stderr
    assert "gc: deleted" in r.stderr
    base = ["--store", store.url, "--job-id", "local#cli"]
    ls = store.cli("checkpoint", "ls", *base)
    assert ls.returncode == 0, ls.stderr
    assert "job local#cli" in ls.stdout and "2 runs" in ls.stdout and "GEN" in ls.stdout
    lsj = json.loads(store.cli("checkpoint", "ls", *base, "--json").stdout)
    gens = lsj["generations"]
    assert [g["retained"] for g in gens].count(True) == 2 and gens[-1]["files"] >= 1
    show = store.cli("checkpoint", "show", *base)
    assert show.returncode == 0 and "counter.json" in show.stdout
    old = store.cli("checkpoint", "show", *base, "--generation", "1")
    assert old.returncode == 78 and "garbage-collected" in old.stderr
    missing = store.cli("checkpoint", "show", *base, "--generation", "999")
    assert missing.returncode == 78 and "no generation 999" in missing.stderr
    assert store.cli("checkpoint", "verify", *base).returncode == 0
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "keep").write_text("x")
    refused = store.cli("checkpoint", "restore", *base, "--dest", str(dest))
    assert refused.returncode == 78 and (dest / "keep").exists()
    gc = store.cli("checkpoint", "gc", *base, "--grace", "0")
    assert gc.returncode == 0 and "kept generations" in gc.stdout
    none = store.cli("checkpoint", "ls", "--store", store.url, "--job-id", "never#ran")
    assert none.returncode == 0 and "no generations committed" in none.stdout


def test_local_runner_waits_after_try_later_by_the_contract(tmp_path, monkeypatch):
    """`local` on a store that does not answer: every run exits 75 after its retries, and the next run
    waits 1 s, 2 s, 4 s (doubling), never at once; the wrapper never starts the payload fresh."""
    from persistjob.local import run_local
    from tests.servers import free_ports

    port = free_ports(1)[0]  # nothing listens there
    for k, v in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": REPO}.items():
        monkeypatch.setenv(k, v)
    sleeps = []
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        code = run_local(["--store", "s3://nobucket/p?endpoint=http://127.0.0.1:%d" % port, "--storage-timeout", "1s"],
                         [PY, COUNTER], name="later", max_runs=4, retry_delay=1.0, out=f, sleep=sleeps.append)
    text = out.read_text()
    assert code == C.EXIT_TEMPFAIL, text
    assert text.count("exited 75 (try later)") == 4 and "not starting fresh" in text
    assert sleeps == [1.0, 2.0, 4.0], "a doubling delay before each re-run after 75 (none after the last run)"
    assert "payload: started" not in text


def test_runs_killed_from_outside_are_lost_runs_not_crashes(store, tmp_path):
    """A payload SIGKILLed from outside (a killed starter, the OOM killer) and a wrapper that vanished
    without an end record are counted as lost runs: the crash streak, which puts a job on hold, counts
    only the payload's own failures."""
    jid = job_id()
    p = store.popen("run", "--job-id", jid, "--store", store.url, "--checkpoint-dir", str(tmp_path / "ck1"),
                    "--interval", "1s", "--", PY, COUNTER, "--quiet")
    try:
        wait_for(lambda: JobLog(store.backend(), jid).head().generation >= 1, 60, "a commit", proc=p)
        kids = [int(x) for x in open("/proc/%d/task/%d/children" % (p.pid, p.pid)).read().split()]
        os.kill(kids[0], signal.SIGKILL)
        _, err = p.communicate(timeout=60)
    finally:
        stop_group(p)
    assert p.returncode == C.EXIT_PAYLOAD_FAILED and "from outside; counted as a lost run" in err, err
    head = JobLog(store.backend(), jid).head()
    assert (head.kind, head.crash_streak, head.lost) == ("end", 0, 1)
    # a run that vanishes (its wrapper killed with the whole group): the next claim counts it as lost
    p = store.popen("run", "--job-id", jid, "--store", store.url, "--checkpoint-dir", str(tmp_path / "ck2"),
                    "--interval", "1s", "--", PY, COUNTER, "--quiet")
    try:
        wait_for(lambda: JobLog(store.backend(), jid).head().kind == "commit", 60, "a commit of the second run", proc=p)
    finally:
        stop_group(p)
    r = store.cli("run", "--job-id", jid, "--store", store.url, "--checkpoint-dir", str(tmp_path / "ck3"),
                  "--lifetime", "1s", "--", PY, COUNTER)
    assert r.returncode == C.EXIT_CHECKPOINTED, r.stderr
    recs = list(JobLog(store.backend(), jid).records())
    third = [x for x in recs if x.kind == "claim"][-1]
    assert (third.run, third.crash_streak, third.lost) == (3, 0, 2)


def test_a_reader_that_goes_away_ends_a_command_quietly(tmp_path):
    """`persistjob checkpoint show ... | head -1`: exit 141 (as a shell reports SIGPIPE), no error line."""
    from tests.conftest import Store

    st = Store("file", "file://%s" % (tmp_path / "store"), {})
    r = st.cli("run", "--job-id", "many", "--store", st.url, "--checkpoint-dir", str(tmp_path / "ck"), "--lifetime", "2s",
               "--interval", "1h", "--",
               "/bin/sh", "-c", "for i in $(seq 3000); do : > file-number-$i; done; sleep 100")
    assert r.returncode == 85, r.stderr
    p = subprocess.Popen([sys.executable, "-m", "persistjob", "checkpoint", "show", "--store", st.url, "--job-id", "many"],
                         env=clean_env({}), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert first and p.wait(timeout=60) == 141 and err == "", err
