"""The submit description is a pure function: tested without a schedd."""

import os
import re

import pytest

from persistjob import constants as C
from persistjob.errors import ConfigError
from persistjob.credentials import Shipment
from persistjob.quoting import classad_string, condor_quote_args
from persistjob.schedd import jobspec_constraint
from persistjob.status import JobView, flag_job
from persistjob.submit import SubmitOptions, build_description, format_description, parse_cron, split_extra


def opts(**kw):
    base = dict(store="s3://b/p", payload=("/bin/payload", "a b"), wrapper="/opt/pj/bin/persistjob")
    base.update(kw)
    return SubmitOptions(**base)


def test_quoting_follows_htcondor_new_syntax():
    assert condor_quote_args(["a", "b"]) == '"a b"'
    assert condor_quote_args(["a b", "c"]) == "\"'a b' c\""
    assert condor_quote_args(["it's"]) == "\"'it''s'\""
    assert condor_quote_args(['say "hi"']) == "\"'say \"\"hi\"\"'\""
    assert condor_quote_args([""]) == "\"''\""
    with pytest.raises(ConfigError):
        condor_quote_args(["a\nb"])


def test_forever_description_policy():
    d = build_description(opts(vacate_grace=30, crash_limit=4, release_limit=6, release_base=120))
    assert d["universe"] == "vanilla" and d["executable"] == "/opt/pj/bin/persistjob"
    assert d["transfer_executable"] == "false"
    assert d["on_exit_remove"] == "false"
    assert "ExitCode =?= 78" in d["on_exit_hold"] and "ExitCode =?= 79" in d["on_exit_hold"]
    assert "PersistLastError" in d["on_exit_hold_reason"] and d["on_exit_hold_subcode"] == "ExitCode"
    assert "HoldReasonSubCode =?= 79" in d["periodic_release"] and "NumHoldsByReason.JobPolicy) < 6" in d["periodic_release"]
    assert "120 * pow(2, min({(ifThenElse(" in d["periodic_release"]
    assert d["kill_sig"] == "SIGTERM" and d["job_max_vacate_time"] == "45"
    assert d["want_io_proxy"] == "true" and d["+PersistJob"] == "true"
    assert d["+PersistName"] == '"persistjob"' and d["+PersistStore"] == '"s3://b/p"'
    assert d["+PersistInterval"] == "3600"
    assert d["+TransferOutput"] == '""'
    assert d["arguments"] == ("\"run --store s3://b/p --lifetime 12h --interval 1h --mode freeze --vacate-grace 30s "
                              "--crash-limit 4 -- /bin/payload 'a b'\"")
    # Options beyond the shown ones are forwarded only when given, from their parsed values.
    d = build_description(opts(keep=5, chunk_size="256k", storage_timeout="90"))
    assert "--vacate-grace 1m --keep 5 --crash-limit 3 --storage-timeout 1m30s --chunk-size 256k -- " in d["arguments"]


def _released(policy, NumHolds, HoldReasonCode=3, **ad):
    """The policy's verdict on a held job whose holds were all by the policy (NumHolds of them)."""
    import classad2

    ad = dict(HoldReasonCode=HoldReasonCode, NumHolds=NumHolds, **ad)
    ad["NumHoldsByReason"] = classad2.ClassAd({"JobPolicy": NumHolds} if HoldReasonCode == 3 else {"Unspecified": NumHolds})
    return classad2.ExprTree(policy).eval(classad2.ClassAd(ad)) is True


def test_try_later_is_a_hold_released_after_a_doubling_delay():
    """75 never re-runs at once on HTCondor: held with subcode 75, released after 30s, 60s, 120s ... (capped)."""
    import time

    d = build_description(opts(retry_base=30))
    assert "(ExitCode =?= 75)" in d["on_exit_hold"]
    rel, now = d["periodic_release"], int(time.time())
    assert not _released(rel, HoldReasonSubCode=75, NumHolds=1, EnteredCurrentStatus=now - 20)
    assert _released(rel, HoldReasonSubCode=75, NumHolds=1, EnteredCurrentStatus=now - 40)
    assert not _released(rel, HoldReasonSubCode=75, NumHolds=3, EnteredCurrentStatus=now - 100)
    assert _released(rel, HoldReasonSubCode=75, NumHolds=3, EnteredCurrentStatus=now - 130)
    # no release limit for 'try later', and the delay stops growing at 30 minutes
    assert _released(rel, HoldReasonSubCode=75, NumHolds=40, EnteredCurrentStatus=now - 1801)
    # crash loops keep their own limit; configuration errors are never released
    assert not _released(rel, HoldReasonSubCode=79, NumHolds=5, EnteredCurrentStatus=now - 10 ** 6)
    assert _released(rel, HoldReasonSubCode=79, NumHolds=1, EnteredCurrentStatus=now - 61)
    assert not _released(rel, HoldReasonSubCode=78, NumHolds=1, EnteredCurrentStatus=now - 10 ** 6)


def test_until_done_and_cron():
    d = build_description(opts(forever=False))
    assert d["on_exit_remove"] == "(ExitBySignal =?= false) && (ExitCode =?= 0)"
    d = build_description(opts(cron="*/5 2-4 * * 1,3", cron_window=50, cron_prep_time=10))
    assert (d["cron_minute"], d["cron_hour"], d["cron_day_of_week"]) == ("*/5", "2-4", "1,3")
    assert d["cron_window"] == "50" and d["cron_prep_time"] == "10" and d["on_exit_remove"] == "false"
    with pytest.raises(ConfigError):
        opts(cron="* * * * *", forever=False)


def test_match_time_values_pass_through():
    d = build_description(opts(store="$$(PersistStoreURL:s3://default/b)", lifetime="$$(PersistLifetime:12h)",
                               payload=("$$(BoincBinary:/opt/boinc)",)))
    assert "$$(PersistStoreURL:s3://default/b)" in d["arguments"]
    assert "$$(PersistLifetime:12h)" in d["arguments"]
    assert d["arguments"].endswith("-- $$(BoincBinary:/opt/boinc)\"")


@pytest.mark.parametrize("spec,msg", [("* * * *", "five fields"), ("61 * * * *", "outside"), ("* 24 * * *", "outside"),
                                      ("*/0 * * * *", "step 0"), ("a * * * *", "bad minute")])
def test_bad_cron(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_cron(spec)


def test_getenv_transfer_extra_and_format():
    d = build_description(opts(getenv=("AWS_ENDPOINT_URL_S3",), transfer_input=("payload.sh",),
                               extra=split_extra(["request_memory=2GB"])))
    assert d["getenv"] == "AWS_ENDPOINT_URL_S3" and d["transfer_input_files"] == "payload.sh" and d["request_memory"] == "2GB"
    text = format_description(d, 3)
    assert text.endswith("queue 3\n") and "request_memory = 2GB" in text
    with pytest.raises(ConfigError):
        split_extra(["novalue"])


@pytest.mark.parametrize("kw,msg", [(dict(payload=()), "no payload"), (dict(count=0), "--count"),
                                    (dict(name="a b"), "--name"), (dict(mode="x"), "mode"),
                                    (dict(interval="soon"), "invalid duration")])
def test_bad_options(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        build_description(opts(**kw))


def test_classad_string_quotes_as_classad2_does():
    assert classad_string('a "b" \\c') == '"a \\"b\\" \\\\c"'


def test_jobspec():
    assert jobspec_constraint("12") == "ClusterId == 12"
    assert jobspec_constraint("12.3") == "ClusterId == 12 && ProcId == 3"
    assert jobspec_constraint('PersistName == "x"') == 'PersistName == "x"'


def view(status, **kw):
    ad = {"JobStatus": status, "EnteredCurrentStatus": 1000.0, C.ATTR_INTERVAL: 60}
    ad.update(kw.pop("ad", {}))
    return JobView(ad, **kw)


def test_flags():
    now = 2000.0
    f = lambda v: flag_job(v, now, idle_long=600, default_interval=3600)  # noqa: E731
    assert f(view(2, last_commit=1990.0)) == []
    assert f(view(2, last_commit=1800.0)) == ["STALLED"]  # 200 s > 2 x 60 s
    assert f(view(2, last_commit=None, ad={"EnteredCurrentStatus": 1950.0})) == []  # just started
    assert f(view(5, ad={"HoldReasonSubCode": 79})) == ["HELD", "CRASHLOOP"]
    assert f(view(1, crash_streak=2)) == ["CRASHLOOP", "IDLE-LONG"]
    assert f(view(2, last_commit=1990.0, fenced=1)) == []  # one refused duplicate, gone: information
    assert f(view(1, ad={"EnteredCurrentStatus": 1900.0})) == []


TEMPLATE_CREDENTIALS = Shipment(("$ENV(HOME)/.cache/persistjob/credentials/persistjob-credentials",),
                                (("AWS_SHARED_CREDENTIALS_FILE", "persistjob-credentials"),))
TEMPLATE_OPTIONS = {
    "persistent-job.sub": dict(store="s3://persistjob-state/jobs", payload=("/opt/payload/run.sh",), name="myjob"),
    "backfill.sub": dict(store="$$(PersistStoreURL:s3://persistjob-state/backfill)", payload=("/opt/boinc/launch.sh",),
                         name="backfill", count=100, lifetime="$$(PersistLifetime:12h)", mode="signal",
                         extra=(("nice_user", "true"), ("request_cpus", "1"), ("request_memory", "1GB"),
                                ("request_disk", "2GB"))),
    "../examples/boinc/boinc.sub": dict(
        store="s3://backfill-state/boinc", name="einstein", count=50, mode="exit-code", vacate_grace=120,
        payload=("/usr/bin/python3", "/opt/persistjob/examples/boinc/boinc_launcher.py", "--project-url",
                 "$$(BoincProjectURL:https://einsteinathome.org/)", "--account-key",
                 "$$(BoincAccountKey:YOUR_WEAK_ACCOUNT_KEY)", "--checkpoint-every", "3600"),
        extra=(("nice_user", "true"), ("request_cpus", "1"), ("request_disk", "4GB"))),
    "arc-grid.sub": dict(store="s3://persistjob-state/grid?endpoint=https://s3.example.org", payload=("./run.sh",),
                         name="arcjob", transfer_input=("run.sh",), wrapper=None, bundle="persistjob.pyz", getenv=(),
                         grid="arc https://arc-ce.example.org:443/arex/rest/1.0",
                         shipment=TEMPLATE_CREDENTIALS._replace(commands=(("x509userproxy", "/tmp/x509up_u1000"),)),
                         extra=(("arc_resources", "<QueueName>grid</QueueName>"),)),
}


@pytest.mark.parametrize("name", sorted(TEMPLATE_OPTIONS))
def test_templates_are_what_submit_builds(name):
    """templates/*.sub are the readable forms of build_description(): same commands, same values."""
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "templates", name)
    cmds, queue = {}, None
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("queue"):
            queue = int(line.split()[1])
            continue
        k, _, v = line.partition(" = ")
        cmds[k] = v
    kw = dict(wrapper="/opt/persistjob/bin/persistjob", getenv=("AWS_ENDPOINT_URL_S3",), shipment=TEMPLATE_CREDENTIALS)
    kw.update(TEMPLATE_OPTIONS[name])
    o = SubmitOptions(**kw)
    assert cmds == build_description(o)
    assert queue == o.count


def test_collect_status_joins_every_job_with_its_own_store_view(tmp_path):
    """The store side is filled in parallel: each view must still get its own job's log (file:// stores,
    a stand-in for the schedd: the join is our logic, the real pool runs it in tests/integration)."""
    from persistjob.repo.log import JobLog
    from persistjob.storage import get_backend
    from persistjob.status import collect_status

    url = "file://%s" % tmp_path
    b = get_backend(url)
    ads = []
    for i in range(12):
        gid = "schedd#%d.0#1700000000" % i
        joblog = JobLog(b, gid, clock=lambda: 1_700_000_000.0)
        head = joblog.head()
        for g in range(1, i + 2):
            mid = "%064x" % g
            head = joblog.append(head, "commit", generation=g, manifest=mid, retained=((g, mid),))
        ads.append({"ClusterId": i, "ProcId": 0, "GlobalJobId": gid, "JobStatus": 2, C.ATTR_STORE: url,
                    "NumJobStarts": 1, "EnteredCurrentStatus": 1_700_000_000})
    ads.append({"ClusterId": 99, "ProcId": 0, "GlobalJobId": "schedd#99.0#1", "JobStatus": 1, C.ATTR_STORE: None})

    class Schedd:  # the queue's side of status (Scheduler or SlurmQueue)
        def persistent_jobs(self, constraint):
            assert constraint is None
            return ads

    views, now = collect_status(Schedd(), None, None, idle_long=3600, default_interval=3600, fenced_window=86400,
                                clock=lambda: 1_700_000_100.0)
    assert now == 1_700_000_100.0
    assert [v.ad["ClusterId"] for v in views] == list(range(12)) + [99]
    assert [v.generation for v in views[:12]] == [i + 1 for i in range(12)], [v.store_error for v in views]
    assert all(v.last_commit == 1_700_000_000.0 and not v.store_error for v in views[:12])
    assert views[12].store_error == "no store URL in the job ad"


def test_status_answers_in_bounded_time_whatever_the_store_does(tmp_path, monkeypatch):
    """A store that hangs: status gives up on it at --timeout, marks its jobs STORE?, and computes every
    age from one clock read after the reads (never a negative age)."""
    import threading

    from persistjob import status as S

    release = threading.Event()

    class Hanging:  # stands in for a stopped S3 server (SIGSTOP): every request waits
        url = "s3://hung/x"

        def __getattr__(self, name):
            def call(*a, **kw):
                release.wait(30)
                raise S.PersistJobError("gave up")
            return call

    monkeypatch.setattr(S.StoreCache, "get", lambda self, url: Hanging())
    ads = [{"ClusterId": i, "ProcId": 0, "GlobalJobId": "s#%d.0#1" % i, "JobStatus": 2, C.ATTR_STORE: "s3://hung/x",
            C.ATTR_INTERVAL: 5, C.ATTR_LAST_COMMIT: 1000, "EnteredCurrentStatus": 900} for i in range(3)]

    class Schedd:
        def persistent_jobs(self, constraint):
            return ads

    clock = iter([1000.0, 1030.0])
    try:
        views, now = S.collect_status(Schedd(), None, None, idle_long=3600, default_interval=3600,
                                      fenced_window=86400, timeout=0.5, clock=lambda: next(clock))
    finally:
        release.set()
    assert now == 1030.0
    for v in views:
        assert v.store_error == S.STORE_TIMEOUT and "STORE?" in v.flags
        # the store is down, the job ad still knows the last commit: 30 s > 2 x 5 s -> STALLED
        assert "STALLED" in v.flags, v.flags
    table = S.status_table(views, now)
    assert "30s ago" in table and not re.search(r"-\d+s ago", table), table


@pytest.mark.parametrize("times,flagged", [
    ([1000, 1001], False),                        # one incident: the displaced run's note and the duplicate's
    ([1000, 1001, 1100, 1200], True),             # refusals keep arriving: a stale instance persists
    ([1000, 1001, 5000, 5001], False),            # two separate incidents
    ([1000, 5000, 9000], True),                   # recurring incidents
])
def test_fenced_flags_only_a_persisting_or_recurring_stale_instance(times, flagged):
    from persistjob.status import JobView, fenced_incidents, flag_job

    v = JobView({"JobStatus": 2, "EnteredCurrentStatus": 10_000, C.ATTR_LAST_COMMIT: 10_000})
    v.fenced = len(times)
    v.fenced_incidents, v.fenced_persists = fenced_incidents(times)
    assert ("FENCED" in flag_job(v, 10_001, idle_long=3600, default_interval=3600)) == flagged


def test_bundle_mode_sends_the_bundle_and_a_local_payload(tmp_path):
    """By default the job carries persistjob (the bundle is its executable) and a payload that is a
    file here; interpreters, system tools and match-time values stay as they are."""
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    d = build_description(SubmitOptions(store="s3://b/p", payload=(str(script), "x"), bundle="/c/persistjob.pyz"))
    assert d["executable"] == "/c/persistjob.pyz" and "transfer_executable" not in d
    assert d["transfer_input_files"] == str(script) and d["arguments"].endswith("-- ./run.sh x\"")
    for payload in (("/usr/bin/python3", "x.py"), ("$$(Payload:/opt/x)",), ("bash", "-c", "true"),
                    (str(tmp_path / "missing"),)):
        d = build_description(SubmitOptions(store="s3://b/p", payload=payload, bundle="/c/persistjob.pyz"))
        assert "transfer_input_files" not in d, payload
    d = build_description(SubmitOptions(store="s3://b/p", payload=(str(script),), bundle="/c/b.pyz",
                                        transfer_payload=False, transfer_input=("data.txt",)))
    assert d["transfer_input_files"] == "data.txt" and str(script) in d["arguments"]
    d = build_description(SubmitOptions(store="s3://b/p", payload=(str(script),), wrapper="/opt/pj/bin/persistjob"))
    assert d["transfer_executable"] == "false" and "transfer_input_files" not in d


# ------------------------------------------------------------------ secrets


@pytest.mark.parametrize("pattern", ["AWS_*", "*", "AWS_SECRET_ACCESS_KEY", "GRID_TOKEN", "*TOKEN*", "DB_PASSWORD",
                                     "AWS_SESSION_TOKEN", "AWS_SECRET*"])
def test_getenv_that_would_carry_a_secret_is_refused(pattern):
    with pytest.raises(ConfigError, match="every user of the pool can read it"):
        opts(getenv=(pattern,))


def test_getenv_checks_what_is_set_here_too():
    from persistjob.credentials import check_getenv

    check_getenv(["AWS_ENDPOINT_URL_S3", "BEARER_TOKEN_FILE", "MYAPP_*"], {"MYAPP_MODE": "x"})
    with pytest.raises(ConfigError, match="MYAPP_API_KEY"):
        check_getenv(["MYAPP_*"], {"MYAPP_MODE": "x", "MYAPP_API_KEY": "k"})


def test_environment_with_a_secret_is_refused():
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        opts(extra=split_extra(['environment="A=1 AWS_SECRET_ACCESS_KEY=abc"']))


def test_s3_credentials_ride_in_a_private_file_never_in_the_description(tmp_path, monkeypatch):
    from persistjob.credentials import shipment

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/SECRET", "AWS_SESSION_TOKEN": "tok123"}
    ship = shipment("s3://bucket/p?endpoint=http://127.0.0.1:1", environ=env)
    (path,) = ship.files
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(os.path.dirname(path)).st_mode & 0o077 == 0
    text = open(path).read()
    assert "[default]" in text and "wJalrXUtnFEMI/SECRET" in text and "aws_session_token = tok123" in text
    assert ship.environment == (("AWS_SHARED_CREDENTIALS_FILE", "persistjob-credentials"),)
    d = build_description(opts(shipment=ship, extra=split_extra(['environment="MODE=fast"'])))
    assert d["transfer_input_files"] == path
    assert d["environment"] == '"AWS_SHARED_CREDENTIALS_FILE=persistjob-credentials MODE=fast"'
    text = format_description(d, 1)
    assert "wJalrXUtnFEMI/SECRET" not in text and "tok123" not in text and "AKIDEXAMPLE" not in text
    # a profile named in the store URL is resolved by botocore (here: there is none such)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="cannot resolve S3 credentials for s3://bucket/p: ProfileNotFound"):
        shipment("s3://bucket/p?profile=grid", environ={})


def test_credentials_file_must_be_private_and_grid_stores_need_a_proxy_or_token(tmp_path, monkeypatch):
    from persistjob.credentials import shipment

    f = tmp_path / "creds"
    f.write_text("[default]\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        shipment("s3://bucket/p", str(f))
    f.chmod(0o600)
    assert shipment("s3://bucket/p", str(f)).files == (str(f),)
    assert shipment("s3://bucket/p", none=True).files == ()
    assert shipment("file:///srv/state").files == ()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="no X.509 proxy"):
        shipment("davs://se.example:443/store", environ={"X509_USER_PROXY": str(tmp_path / "none"),
                                                         "XDG_RUNTIME_DIR": str(tmp_path / "run")})
    proxy = tmp_path / "x509up"
    proxy.write_text("proxy")
    proxy.chmod(0o600)
    ship = shipment("root://se.example//store", environ={"X509_USER_PROXY": str(proxy), "BEARER_TOKEN_FILE": str(f)})
    assert ship.commands == (("x509userproxy", str(proxy)),) and ship.files == (str(f),)
    assert ship.environment == (("BEARER_TOKEN_FILE", "creds"),)


def test_status_prints_one_line_per_job_with_the_reason_in_its_row():
    from persistjob.status import JobView, status_table

    held = JobView({"ClusterId": 7, "ProcId": 0, "JobStatus": 5, "NumJobStarts": 1,
                    "HoldReason": "persistjob exit 78: no such bucket\n(see the job's error file)"})
    held.flags = ["HELD"]
    down = JobView({"ClusterId": 8, "ProcId": 0, "JobStatus": 2, "NumJobStarts": 3})
    down.store_error, down.flags = "the store did not answer in time", ["STORE?"]
    fine = JobView({"ClusterId": 9, "ProcId": 0, "JobStatus": 2, "NumJobStarts": 1})
    lines = status_table([held, down, fine], 1000.0).splitlines()
    assert len(lines) == 4 and lines[0].split()[-1] == "REASON"
    assert lines[1].startswith("7.0 ") and lines[1].endswith("held: persistjob exit 78: no such bucket (see the job's error file)")
    assert lines[2].startswith("8.0 ") and lines[2].endswith("store: the store did not answer in time")
    assert lines[3].startswith("9.0 ") and lines[3].endswith("ok")


def test_status_prometheus_output_and_stats_from_a_real_store(tmp_path):
    """Two jobs committed in a file:// store, the schedd side given: the exposition text parses with
    prometheus_client's own parser, and --stats counts the store requests per job."""
    from prometheus_client.parser import text_string_to_metric_families

    from persistjob import status as S
    from persistjob.repo import JobRepo
    from persistjob.storage import get_backend

    url = "file://%s" % (tmp_path / "store")
    for jid in ("pool#1.0#1", "pool#2.0#1"):
        repo = JobRepo(get_backend(url), jid)
        repo.check_fencing = lambda: None
        repo.claim()
        (tmp_path / jid).mkdir()
        (tmp_path / jid / "state").write_bytes(b"x" * 5000)
        ws = repo.workspace(str(tmp_path / jid), racy=0)
        repo.commit(ws, ws.snapshot())
        ws.close()
    ads = [{"ClusterId": i, "ProcId": 0, "GlobalJobId": "pool#%d.0#1" % i, "JobStatus": 2, C.ATTR_STORE: url,
            C.ATTR_NAME: "n%d" % i, "EnteredCurrentStatus": 0} for i in (1, 2)]
    ads.append({"ClusterId": 3, "ProcId": 0, "GlobalJobId": "pool#3.0#1", "JobStatus": 5, C.ATTR_STORE: url,
                "HoldReason": "persistjob exit 78: x", "EnteredCurrentStatus": 0})

    class Schedd:
        def persistent_jobs(self, constraint):
            return ads

    stores = S.StoreCache(10)
    views, now = S.collect_status(Schedd(), None, None, idle_long=3600, default_interval=3600, fenced_window=86400,
                                  stores=stores)
    text = S.prometheus_text(views, now, stores.totals())
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    gens = {s.labels["job"]: s.value for s in fams["persistjob_job_generation"].samples}
    assert gens == {"1.0": 1, "2.0": 1, "3.0": 0}
    assert {s.labels["job"]: s.value for s in fams["persistjob_job_bytes"].samples} == {"1.0": 5000, "2.0": 5000}
    assert [(s.labels["job"], s.labels["flag"]) for s in fams["persistjob_job_flag"].samples] == [("3.0", "HELD")]
    requests = {s.labels["kind"]: s.value for s in fams["persistjob_store_requests"].samples}
    assert requests["list"] >= 3 and all(s.labels["store"] == url for s in fams["persistjob_store_requests"].samples)
    line = S.stats_line(views, stores.totals(), 0.5)
    total = int(sum(requests.values()))
    assert line.startswith("status: 3 jobs, %d store requests (%.1f per job: " % (total, total / 3)), line


def test_status_lists_the_summaries_and_confirms_from_the_log_what_they_would_flag(tmp_path, monkeypatch):
    """Status lists every job's summary and the fenced notes of a store (one listing each, whatever
    the number of jobs; with fewer than BULK_MIN jobs of a store, one listing per job).  A summary
    behind its log that would make a running job look STALLED is read again from the log first: the
    job that did commit is not flagged; those that did not are.  --from-log reads every log."""
    from persistjob import status as S
    from persistjob.repo.layout import Summary
    from persistjob.repo.log import JobLog
    from persistjob.storage import get_backend

    url = "file://%s" % (tmp_path / "store")
    b = get_backend(url)
    t0 = 1_700_000_000.0
    ads = []
    for i in range(10):
        gid = "pool#%d.0#1" % i
        clock = [t0]
        joblog = JobLog(b, gid, clock=lambda: clock[0])
        head = joblog.append(joblog.head(), "claim", run=1)
        first = head = joblog.append(head, "commit", generation=1, manifest="%064x" % 1, retained=((1, "%064x" % 1),))
        if i < 2:  # a second commit 3 hours later; job 0's summary is left behind at the first
            clock[0] = t0 + 3 * 3600
            head = joblog.append(head, "commit", generation=2, manifest="%064x" % 2, retained=((2, "%064x" % 2),))
        if i == 0:
            b.delete_many([o.key for o in b.list(joblog.keys.summary_dir)])
            b.put(joblog.keys.summary(Summary(first.seq, "commit", 1, 1, 0, 0, first.committed)), first.to_bytes())
        ads.append({"ClusterId": i, "ProcId": 0, "GlobalJobId": gid, "JobStatus": 2, C.ATTR_STORE: url,
                    "EnteredCurrentStatus": t0})
    JobLog(b, "pool#9.0#1", clock=lambda: t0).note_fenced(2, "a duplicate")

    class Schedd:
        def persistent_jobs(self, constraint):
            return ads

    def status(**kw):
        stores = S.StoreCache(10)
        views, _ = S.collect_status(Schedd(), None, None, idle_long=3600, default_interval=3600, fenced_window=86400,
                                    clock=lambda: t0 + 3 * 3600 + 60, stores=stores, **kw)
        return views, stores.totals()[url]

    for bulk_min, summary_lists in ((11, 10), (5, 1)):  # 10 jobs: fewer than BULK_MIN, then more
        monkeypatch.setattr(S, "BULK_MIN", bulk_min)
        for v in ads:
            v["JobStatus"] = 2
        views, counts = status()
        assert [v.generation for v in views] == [2, 2] + [1] * 8
        assert [v.flags for v in views] == [[], []] + [["STALLED"]] * 8
        # Every job looked stalled from its summary but job 1: those nine were read again from the log.
        assert [v.as_json()["read_from"] for v in views] == ["log", "summary"] + ["log"] * 8
        assert views[9].fenced == 1 and views[8].fenced == 0
        # The summaries and the notes listed; then per confirmed job its summary, its log and its notes in
        # two places listed, and its newest record read (and job 9's note); the store's own mode read once.
        assert (counts["list"], counts["get"]) == (summary_lists + 1 + 9 * 4, 9 + 1 + 1), counts

        for v in ads[2:]:  # the same jobs, idle: nothing to confirm but job 0
            v["JobStatus"] = 1
        views, counts = status()
        assert [v.as_json()["read_from"] for v in views] == ["log", "summary"] + ["summary"] * 8
        assert (counts["list"], counts.get("get")) == (summary_lists + 1 + 4, 1 + 1), counts  # and store.json

    views, counts = status(from_log=True)
    assert {v.as_json()["read_from"] for v in views} == {"log"} and views[0].generation == 2


def test_a_store_url_no_backend_reads_is_refused_before_credentials_are_looked_for():
    from persistjob.credentials import shipment
    from persistjob.errors import InvalidURL

    for bad in ("bad", "ftp://host/x", "S3://bucket/p", "/srv/state"):
        with pytest.raises(InvalidURL, match="expected one of file://, s3://, root://"):
            shipment(bad, none=True)  # even when the site provides the credentials
    with pytest.raises(InvalidURL) as err:
        shipment("ftp://user:hunter2@host/x?token=t0ps3cret", none=True)
    assert "scheme 'ftp'" in str(err.value) and "hunter2" not in str(err.value) and "t0ps3cret" not in str(err.value)
    assert shipment("root://se//store?checksum_slots=1", none=True).files == ()
    assert shipment("$$(PersistStoreURL)/jobs").files == ()  # a machine-ad macro: the worker's value


def test_no_credentials_for_a_store_names_it_without_its_secrets(monkeypatch, tmp_path):
    from persistjob.credentials import shipment

    monkeypatch.delenv("BEARER_TOKEN_FILE", raising=False)
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "none"))
    with pytest.raises(ConfigError) as err:
        shipment("root://user:hunter2@se.example//store?authz=t0ps3cret", environ=dict(os.environ))
    text = str(err.value)
    assert text.startswith("no credentials for root://***@se.example//store: no X.509 proxy"), text
    assert "hunter2" not in text and "t0ps3cret" not in text


def test_status_says_which_stores_share_chunks_and_when_a_gc_pass_runs_without_writing(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from persistjob import status as S
    from persistjob.repo import JobRepo, shared
    from persistjob.storage import get_backend

    url = "file://%s?dedup=store" % (tmp_path / "store")
    repo = JobRepo(get_backend(url), "pool#1.0#1")
    repo.check_fencing = lambda: None
    repo.claim()
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state").write_bytes(b"y" * 3000)
    ws = repo.workspace(str(tmp_path / "ck"), racy=0)
    repo.commit(ws, ws.snapshot())
    ws.close()
    empty = "file://%s?dedup=store" % (tmp_path / "empty")  # a URL that would create store.json if written through
    ads = [{"ClusterId": 1, "ProcId": 0, "GlobalJobId": "pool#1.0#1", "JobStatus": 2, C.ATTR_STORE: url,
            "EnteredCurrentStatus": 0},
           {"ClusterId": 2, "ProcId": 0, "GlobalJobId": "pool#2.0#1", "JobStatus": 1, C.ATTR_STORE: empty,
            "EnteredCurrentStatus": 0}]

    class Schedd:
        def persistent_jobs(self, constraint):
            return ads

    def status():
        stores = S.StoreCache(10)
        views, now = S.collect_status(Schedd(), None, None, idle_long=3600, default_interval=3600,
                                      fenced_window=86400, stores=stores)
        return views, now, stores

    views, now, stores = status()
    assert stores.notes[url] == S.StoreNote(url, True, None)
    assert stores.notes[empty] == S.StoreNote(empty, False, None)
    as_json = {v["ClusterId"]: v for v in (view.as_json() for view in views)}  # what --json prints, per job
    assert (as_json[1]["store_shared_chunks"], as_json[1]["store_gc_since"]) == (True, None)
    assert as_json[2]["store_shared_chunks"] is False and "store_gc_since" not in as_json[2]
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").rglob("store.json"))  # read only
    assert stores.notes[url].line().endswith("chunks kept once for all its jobs (dedup=store); no gc pass running")

    store = get_backend(url)
    with shared.PassLease(store, shared.store_config(store)):  # a gc pass holds the store
        views, now, stores = status()
        note = stores.notes[url]
        assert note.shared and note.gc_since is not None and abs(note.gc_since - now) < 60
        assert "a gc pass is running (lease taken " in note.line()
        assert [v.as_json()["store_gc_since"] for v in views if v.ad["ClusterId"] == 1] == [note.gc_since]
        fams = {f.name: f for f in text_string_to_metric_families(
            S.prometheus_text(views, now, stores.totals(), stores.notes.values()))}
    assert {s.labels["store"]: s.value for s in fams["persistjob_store_shared_chunks"].samples} == {url: 1, empty: 0}
    assert {s.labels["store"]: s.value for s in fams["persistjob_store_gc_running"].samples} == {url: 1}
    views, now, stores = status()
    assert stores.notes[url].gc_since is None  # the pass ended: its lease is gone


def test_submit_ends_quickly_and_a_reader_gone_before_its_last_bytes_is_a_quiet_141(tmp_path):
    """``submit`` skips the interpreter's teardown (cli.entry); output still buffered when it ends is
    flushed first, and a pipe whose reader has gone ends it as a closed pipe ends any command: 141,
    nothing on stderr."""
    import subprocess
    import sys

    env = dict(os.environ, AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="secret", HOME=str(tmp_path))
    cmd = [sys.executable, "-m", "persistjob", "-q", "submit", "--dry-run", "--store", "s3://b/x", "--", "/bin/true"]
    out = subprocess.run(cmd, capture_output=True, env=env, cwd=str(tmp_path))
    assert out.returncode == 0 and out.stdout.decode().rstrip().endswith("queue 1") and out.stderr == b"", out
    r, w = os.pipe()
    os.close(r)
    gone = subprocess.run(cmd, stdout=w, stderr=subprocess.PIPE, env=env, cwd=str(tmp_path))
    os.close(w)
    assert gone.returncode == 141 and gone.stderr == b"", gone.stderr
