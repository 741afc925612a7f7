"""The Work Queue executor with real work_queue_worker processes on 127.0.0.1.

AliEn's CONDOR.pm / HTCONDOR.pm and JAliEn's HTCONDOR command lines run
unchanged against the condor_* shims; counts are checked as jobs move
idle -> running -> done.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import COUNTER, REPO, clean_env, wait_for
from tests.servers import free_ports, is_local_peer, local_addresses

pytestmark = pytest.mark.workqueue

# From shared/reference/htcondor-23.9-outputs.txt (what a real HTCondor 23.9 pool prints for a bare condor_q)
REF_BATCH_HEADER = "OWNER    BATCH_NAME    SUBMITTED   DONE   RUN    IDLE   HOLD  TOTAL JOB_IDS"


def _need_wq():
    if not shutil.which("work_queue_worker"):
        pytest.fail("work_queue_worker missing: apt-get install coop-computing-tools python3-workqueue (make test does)")


AGENT = """#!/bin/sh
echo "agent $* CONDOR_ID=$CONDOR_ID ALIEN_JOBAGENT_ID=$ALIEN_JOBAGENT_ID ALIEN_CM_AS_LDAP_PROXY=$ALIEN_CM_AS_LDAP_PROXY"
echo "agent stderr" >&2
[ -n "$PIDDIR" ] && echo $$ > "$PIDDIR/agent.$CONDOR_ID.pid"
sleep ${AGENT_SLEEP:-1}
exit ${AGENT_RC:-0}
"""


class Site:
    """A manager (persistjob wq manager) and the environment its shims need."""

    def __init__(self, tmp, port=None, extra_args=(), env=None):
        _need_wq()
        self.tmp = tmp
        os.makedirs(tmp, exist_ok=True)
        self.work_dir = str(tmp / "awq")
        self.port = port or free_ports(1)[0]
        self.extra_args = list(extra_args)
        self.agent = str(tmp / "agent.sh")
        with open(self.agent, "w") as f:
            f.write(AGENT)
        os.chmod(self.agent, 0o755)
        self.env = clean_env(dict(env or {}, AWQ_WORKDIR=self.work_dir,
                                  PATH=os.path.join(self.work_dir, "bin") + os.pathsep + os.environ["PATH"]))
        self.proc = None
        self.workers = []

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "persistjob", "wq", "manager", "--port", str(self.port),
                                      "--work-dir", self.work_dir, *self.extra_args], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        wait_for(lambda: os.path.exists(os.path.join(self.work_dir, "manager.json")), 30, "the manager")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def worker(self, *args, single_shot=False, timeout=60, host_port=None):
        cmd = ["work_queue_worker", "-t", str(timeout), "--cores", "1"] + (["--single-shot"] if single_shot else [])
        cmd += list(args) + list(host_port or ("127.0.0.1", str(self.port)))
        p = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.workers.append(p)
        return p

    def stop_workers(self):
        for p in self.workers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()

    def sh(self, command, input=None, cwd=None, timeout=60):
        return subprocess.run(["sh", "-c", command], env=self.env, input=input, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd or str(self.tmp))

    def count(self, constraint):
        r = self.sh('condor_q -format "%%s\\n" OWNER -constraint "%s" | wc -l' % constraint)
        return int(r.stdout.strip())


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path).start()
    yield s
    s.stop_workers()
    s.stop()


def alien_submit(site, n=1, sleep=1, extra=""):
    sub = ("executable = %s\narguments = -x 1\noutput = %s/out.$(Cluster).$(Process)\nerror = %s/err.$(Cluster).$(Process)\n"
           "log = %s/log.$(Cluster)\nenvironment = ALIEN_JOBAGENT_ID=a1;CONDOR_ID=$(Cluster).$(Process);AGENT_SLEEP=%s\n%s"
           "queue %d\n" % (site.agent, site.tmp, site.tmp, site.tmp, sleep, extra, n))
    r = site.sh("condor_submit", input=sub)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_alien_condor_pm_lifecycle(site):
    r = alien_submit(site, n=2, sleep=3)
    assert r.stdout == "Submitting job(s)..\n2 job(s) submitted to cluster 1.\n"
    # CONDOR.pm: counts and status listing, before any worker: idle
    assert site.count("JobStatus==1 || JobStatus==2") == 2
    assert site.count("JobStatus==1") == 2
    st = site.sh('condor_q -constraint "JobStatus==1 || JobStatus==2" -format "%d " ClusterId -format "%s \\n" Cmd')
    assert st.stdout == "1 %s \n1 %s \n" % (site.agent, site.agent)
    assert site.sh("condor_q").returncode == 0  # the backend is up
    site.worker()
    site.worker()
    wait_for(lambda: site.count("JobStatus==2") == 2, 30, "both running")
    assert site.count("JobStatus==1") == 0
    wait_for(lambda: site.count("JobStatus==1 || JobStatus==2") == 0, 60, "both done")
    out = open(site.tmp / "out.1.0").read()
    assert "agent -x 1 CONDOR_ID=1.0 ALIEN_JOBAGENT_ID=a1" in out
    assert open(site.tmp / "err.1.1").read() == "agent stderr\n"
    events = re.findall(r"^(\d{3}) \((\d{3})\.(\d{3})\.000\)", open(site.tmp / "log.1").read(), re.M)
    assert sorted(e[0] for e in events if e[2] == "000") == ["000", "001", "005"]
    assert "(1) Normal termination (return value 0)" in open(site.tmp / "log.1").read()
    site.stop()
    down = site.sh("condor_q")
    assert down.returncode == 1 and down.stdout == "" and down.stderr.startswith("Error: Can't find address for schedd ")


def test_htcondor_pm_totals_and_reference_formats(site):
    alien_submit(site, n=2, sleep=20)
    alien_submit(site, n=1, sleep=20)
    user = os.environ.get("USER") or __import__("getpass").getuser()
    site.worker()
    wait_for(lambda: site.count("JobStatus==2") == 1, 30, "one running")
    r = site.sh("condor_q %s -totals" % user)
    lines = r.stdout.split("\n")
    assert lines[0] == "" and lines[1] == "" and lines[2].startswith("-- Schedd: ") and lines[-1] == "" and lines[-2] == ""
    m = re.search(r"(\d+) idle, (\d+) running, (\d+) held, (\d+) suspended", [x for x in lines if x][-1])
    assert m.groups() == ("2", "1", "0", "0")
    assert lines[3] == "Total for query: 3 jobs; 0 completed, 0 removed, 2 idle, 1 running, 0 held, 0 suspended "
    assert lines[4] == "Total for all users: 3 jobs; 0 completed, 0 removed, 2 idle, 1 running, 0 held, 0 suspended"
    table = site.sh("condor_q").stdout.split("\n")
    assert table[3] == REF_BATCH_HEADER
    assert re.match(r"^%-8s ID: 1       \d\d/\d\d \d\d:\d\d      _      1      1      _      2 1\.0-1$" % user[:8], table[4]), table[4]
    assert re.match(r"^%-8s ID: 2       \d\d/\d\d \d\d:\d\d      _      _      1      _      1 2\.0$" % user[:8], table[5]), table[5]
    h = site.sh("condor_q -af:h ClusterId JobStatus").stdout
    assert h.splitlines()[0] == "ClusterId JobStatus" and "1         2        \n" in h
    running = site.sh("condor_q -constraint JobStatus==2 -af ProcId").stdout.strip()
    js = json.loads(site.sh("condor_q 1.%s -json -attributes ClusterId,ProcId,JobStatus,Owner,Cmd,Environment" % running).stdout)
    assert js == [{"ClusterId": 1, "Cmd": site.agent, "JobStatus": 2, "Owner": user, "ProcId": int(running),
                   "Environment": "AGENT_SLEEP=20 ALIEN_JOBAGENT_ID=a1 CONDOR_ID=1.%s" % running}]
    raw = site.sh("condor_q 2.0 -json -attributes ClusterId,ProcId").stdout
    assert raw == '[\n{\n  "ClusterId": 2,\n  "ProcId": 0\n}\n]\n'
    af = site.sh("condor_q -af ClusterId ProcId JobStatus Owner Cmd Args Environment").stdout.splitlines()
    assert af[int(running)] == "1 %s 2 %s %s -x 1 AGENT_SLEEP=20 ALIEN_JOBAGENT_ID=a1 CONDOR_ID=1.%s" % (
        running, user, site.agent, running)
    assert af[2] == "2 0 1 %s %s -x 1 AGENT_SLEEP=20 ALIEN_JOBAGENT_ID=a1 CONDOR_ID=2.0" % (user, site.agent)
    rm = site.sh("condor_rm 99")
    assert rm.returncode == 1 and rm.stderr == "\nCouldn't find/remove all jobs in cluster 99\n"


def test_jalien_htcondor_submit_file(site):
    sub = site.tmp / "jalien.sub"
    sub.write_text(
        'cmd = %s\noutput = %s/jout.$(Cluster)\nerror = %s/jerr.$(Cluster)\nlog = %s/jlog.$(Cluster)\n'
        '+TransferOutput = ""\nperiodic_hold = JobStatus == 1 && gridjobstatus =?= undefined && CurrentTime - EnteredCurrentStatus > 1800\n'
        'periodic_remove = CurrentTime - QDate > 259200\nuniverse = vanilla\nuse_x509userproxy = true\n'
        "environment = \"ALIEN_CM_AS_LDAP_PROXY='localhost:10000' ALIEN_JOBAGENT_ID='j1' AGENT_SLEEP='2'\"\n"
        '+AliEnQueue = "ALICE::Site::CE"\n+Requests = 42\nqueue 1\n' % (site.agent, site.tmp, site.tmp, site.tmp))
    r = site.sh("condor_submit %s" % sub)
    assert r.returncode == 0 and r.stdout == "Submitting job(s).\n1 job(s) submitted to cluster 1.\n", r.stdout + r.stderr
    assert site.sh("condor_q -const 'JobStatus < 3' -af JobStatus GridResource").stdout == "1 undefined\n"
    assert site.sh("condor_status -schedd -af totalRunningJobs totalIdleJobs").stdout == "0 1\n"
    assert site.sh("condor_status -schedd -af totalRunningJobs totalIdleJobs totalHeldJobs").stdout == "0 1 0\n"
    assert site.sh("condor_q -af AliEnQueue Requests 'Requests * 2'").stdout == "ALICE::Site::CE 42 84\n"
    assert site.sh("condor_q -af Environment").stdout == \
        "AGENT_SLEEP=2 ALIEN_CM_AS_LDAP_PROXY=localhost:10000 ALIEN_JOBAGENT_ID=j1\n"
    site.worker()
    wait_for(lambda: site.sh("condor_q -const 'JobStatus < 3' -af JobStatus").stdout == "2\n", 30, "running")
    assert site.sh("condor_status -schedd -af totalRunningJobs totalIdleJobs").stdout == "1 0\n"
    wait_for(lambda: site.sh("condor_q -const 'JobStatus < 3' -af JobStatus").stdout == "", 60, "done")
    assert "ALIEN_JOBAGENT_ID=j1 ALIEN_CM_AS_LDAP_PROXY=localhost:10000" in (site.tmp / "jout.1").read_text()


def test_condor_rm_of_a_running_job_kills_its_task(site):
    piddir = site.tmp / "pids"
    piddir.mkdir()
    sub = ("executable = %s\noutput = %s/o\nerror = %s/e\nenvironment = CONDOR_ID=$(Cluster).$(Process);"
           "AGENT_SLEEP=120;PIDDIR=%s\nqueue\n" % (site.agent, site.tmp, site.tmp, piddir))
    assert site.sh("condor_submit", input=sub).returncode == 0
    site.worker()
    pidfile = piddir / "agent.1.0.pid"
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "the agent to start")
    wait_for(lambda: site.count("JobStatus==2") == 1, 30, "running")
    pid = int(pidfile.read_text())
    r = site.sh("condor_rm 1")
    assert r.returncode == 0 and r.stdout == "All jobs in cluster 1 have been marked for removal\n"
    wait_for(lambda: site.count("JobStatus==1 || JobStatus==2") == 0, 30, "the job to leave the queue")
    wait_for(lambda: not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z",
             30, "the agent to be killed")


@pytest.mark.parametrize("text,err", [
    ("output = x\nqueue\n", "ERROR: No 'executable' parameter was provided\n"),
    ('executable = /bin/true\nenvironment = "A=1 B=2\nqueue\n',
     "ERROR: Unterminated double-quote.\nThe environment you specified was: '\"A=1 B=2'\n"),
    ("executable = /bin/true\nuniverse = martian\nqueue\n", "ERROR: I don't know about the 'martian' universe.\n"),
    ("executable = /nonexistent/agent\nqueue\n", "ERROR: Executable file /nonexistent/agent does not exist\n"),
])
def test_malformed_submit_files(site, text, err):
    r = site.sh("condor_submit", input=text, timeout=30)
    assert r.returncode == 1
    assert r.stdout == "Submitting job(s)" and r.stderr == err
    assert site.sh("condor_q -af ClusterId").stdout == ""


def test_malformed_submit_from_a_file_never_hangs(site):
    (site.tmp / "bad.sub").write_text("executable = /bin/true\narguments = \"unterminated\nqueue\n")
    r = site.sh("condor_submit bad.sub < /dev/null", timeout=30)
    assert r.returncode == 1 and "Unterminated double-quote" in r.stderr


def test_two_foremen_complete_jobs_concurrently(site, tmp_path):
    base = _consecutive_free_ports(2)
    env = dict(site.env, WQ_MASTER="127.0.0.1:%d" % site.port, WQ_NUM_FOREMEN="2", WQ_MASTER_BASEPORT=str(base),
               WQ_NUM_WORKERS="4", WQ_FOREMEN="127.0.0.1", WQ_WORKDIR=str(tmp_path / "wqw"), WQ_IDLETIMEOUT="60",
               WQ_DRAIN=str(tmp_path / "drainfile"))
    pj = [sys.executable, "-m", "persistjob", "wq", "workers"]
    try:
        assert subprocess.run(pj + ["start-foremen"], env=env, capture_output=True, text=True).returncode == 0
        assert subprocess.run(pj + ["start-workers"], env=env, capture_output=True, text=True).returncode == 0
        cnt = subprocess.run(pj + ["count"], env=env, capture_output=True, text=True).stdout
        assert "foremen: 2 running" in cnt and "workers: 4 running" in cnt
        alien_submit(site, n=8, sleep=4)
        t0 = time.monotonic()
        peak = 0
        while site.count("JobStatus==1 || JobStatus==2"):
            peak = max(peak, site.count("JobStatus==2"))
            assert time.monotonic() - t0 < 120
            time.sleep(0.5)
        took = time.monotonic() - t0
        print("two foremen, 4 workers: 8 x 4 s jobs in %.1fs, peak %d running at once" % (took, peak))
        assert peak >= 2, "foremen must not serialize the jobs"  # (how long it took depends on the machine's load)
        for i in range(8):
            assert "CONDOR_ID=1.%d" % i in open(site.tmp / ("out.1.%d" % i)).read()
    finally:
        subprocess.run(pj + ["stop"], env=env, capture_output=True, text=True, timeout=120)
    cnt = subprocess.run(pj + ["count"], env=env, capture_output=True, text=True).stdout
    assert "foremen: 0 running" in cnt and "workers: 0 running" in cnt


def _consecutive_free_ports(n):
    import socket

    for _ in range(50):
        base = free_ports(1)[0]
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no consecutive free ports")


def test_single_task_workers_run_exactly_one_task(site, tmp_path):
    env = dict(site.env, WQ_MASTER="127.0.0.1:%d" % site.port, WQ_NUM_FOREMEN="1", WQ_FOREMEN="127.0.0.1",
               WQ_MASTER_BASEPORT=str(site.port), WQ_NUM_WORKERS="1", WQ_SINGLETASK="1", WQ_NORESPAWN="1",
               WQ_WORKDIR=str(tmp_path / "wqw"), WQ_DRAIN=str(tmp_path / "drainfile"))
    pj = [sys.executable, "-m", "persistjob", "wq", "workers"]
    alien_submit(site, n=3, sleep=1)
    try:
        subprocess.run(pj + ["start-workers"], env=env, check=True, capture_output=True)
        wait_for(lambda: "workers: 0 running" in subprocess.run(pj + ["count"], env=env, capture_output=True,
                                                               text=True).stdout, 60, "the single-task worker to exit")
    finally:
        subprocess.run(pj + ["stop-workers"], env=env, capture_output=True)
    # A task the stopped worker had received but not run goes back to the queue when the manager notices
    # the worker left, which it may do a moment after the worker exits (CI saw it still Running).
    wait_for(lambda: site.count("JobStatus==1") == 2, 60, "the returned task to be idle again", step=1)
    assert len([p for p in os.listdir(site.tmp) if p.startswith("out.1.")]) == 1, "exactly one task ran"


def test_drain_stops_intake_and_manager_exits_when_empty(site):
    alien_submit(site, n=1, sleep=4)
    site.worker()
    wait_for(lambda: site.count("JobStatus==2") == 1, 30, "running")
    open(os.path.join(site.work_dir, "drain"), "w").close()
    alien_submit(site, n=2, sleep=1)
    site.proc.wait(timeout=60)
    assert site.proc.returncode == 0
    assert "drained, nothing running: exiting" in site.proc.stdout.read()
    assert os.path.exists(site.tmp / "out.1.0")
    assert not os.path.exists(site.tmp / "out.2.0"), "no intake while draining"
    # the drained jobs are still in the durable table: the next manager runs them
    os.unlink(os.path.join(site.work_dir, "drain"))
    site.start()
    wait_for(lambda: os.path.exists(site.tmp / "out.2.1"), 60, "the spooled jobs to run after the drain")


def test_manager_restart_mid_run_loses_no_job(site):
    alien_submit(site, n=6, sleep=4)
    site.worker(timeout=120)
    site.worker(timeout=120)
    wait_for(lambda: site.count("JobStatus==2") == 2, 30, "two running")
    site.stop()
    assert site.sh("condor_q").returncode == 1
    site.start()
    assert site.count("JobStatus==1 || JobStatus==2") == 6 - sum(
        os.path.exists(site.tmp / ("out.1.%d" % i)) for i in range(6))
    wait_for(lambda: all(os.path.exists(site.tmp / ("out.1.%d" % i)) for i in range(6)), 120, "all six outputs")
    wait_for(lambda: site.count("JobStatus==1 || JobStatus==2") == 0, 30, "an empty queue")
    for i in range(6):
        assert "CONDOR_ID=1.%d" % i in open(site.tmp / ("out.1.%d" % i)).read()


def test_persistent_task_resumed_three_times(site, tmp_path):
    from persistjob.repo.log import JobLog
    from persistjob.storage import get_backend

    store = "file://%s" % (tmp_path / "store")
    r = subprocess.run([sys.executable, "-m", "persistjob", "wq", "submit", "--work-dir", site.work_dir, "--count", "1",
                        "--name", "pt", "--store", store, "--lifetime", "2s", "--interval", "1s", "--", sys.executable,
                        COUNTER], env=site.env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "job IDs wq#pt#0..0" in r.stdout
    site.worker(timeout=120)
    log = JobLog(get_backend(store), "wq#pt#0")
    wait_for(lambda: len([x for x in log.runs() if x.get("state") == "ended"]) >= 3, 120, "three runs")
    site.sh("condor_rm -all")
    runs = sorted(log.runs(), key=lambda x: x["run"])
    assert [x["exit_code"] for x in runs[:3]] == [85, 85, 85]
    assert runs[1]["restored_generation"] == runs[0]["generation"] > 0
    assert runs[2]["restored_generation"] == runs[1]["generation"] > runs[0]["generation"]
    assert all(x["job_id"] == "wq#pt#0" for x in runs)


def test_persistent_task_bad_store_is_held(site, tmp_path):
    r = subprocess.run([sys.executable, "-m", "persistjob", "wq", "submit", "--work-dir", site.work_dir, "--name", "bad",
                        "--store", "s3://no-such-bucket-pj/x?endpoint=http://127.0.0.1:1", "--storage-timeout", "2s",
                        "--", sys.executable, COUNTER], env=site.env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    site.worker(timeout=60)
    wait_for(lambda: site.sh("condor_q -af JobStatus").stdout == "5\n", 60, "the hold")
    reason = site.sh("condor_q -af HoldReason").stdout
    assert reason.startswith("persistjob exit 75") or reason.startswith("persistjob exit 78") or "exit" in reason


def _no_external_connections():
    """TCP connections whose peer is not an address of this machine (ss -tnp)."""
    local = local_addresses()
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if len(line.split()) >= 5 and not is_local_peer(line.split()[4], local)]


def test_catalog_reporting_only_when_asked(tmp_path):
    _need_wq()
    cport = free_ports(1)[0]
    project = "alien_pj_%d" % cport
    cat = subprocess.Popen(["catalog_server", "-p", str(cport), "-I", "127.0.0.1", "-u", "127.0.0.1:%d" % cport,
                            "-U", "1h", "-S"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    named = quiet = None
    try:
        time.sleep(1)
        # unnamed: a manager with CATALOG_HOST pointing at our catalog but no --catalog-host reports nothing
        quiet = Site(tmp_path / "q", env={"CATALOG_HOST": "127.0.0.1:%d" % cport}).start()
        named = Site(tmp_path / "n", extra_args=["--catalog-host", "127.0.0.1", "--catalog-port", str(cport),
                                                 "--project-name", project]).start()

        def projects():
            with urllib.request.urlopen("http://127.0.0.1:%d/query.json" % cport, timeout=5) as resp:
                return [x for x in json.loads(resp.read().decode()) if x.get("type") in ("wq_master", "wq_manager")]

        found = wait_for(lambda: [p for p in projects() if p.get("project") == project], 30, "the catalog entry")
        assert int(found[0]["port"]) == named.port
        assert [p for p in projects() if int(p.get("port", 0)) == quiet.port] == []
        assert _no_external_connections() == []
    finally:
        for s in (named, quiet):
            if s is not None:
                s.stop()
        cat.terminate()
        cat.wait(timeout=10)


def test_job_wrapper_filters_the_environment(tmp_path):
    wrapper = os.path.join(REPO, "templates", "alien_job_wrapper.sh")
    site = Site(tmp_path, extra_args=["--job-wrapper", wrapper]).start()
    try:
        with open(site.agent, "w") as f:
            f.write("#!/bin/sh\necho \"pid $$\"\nenv | sort\n")
        sub = ("executable = %s\noutput = %s/wout\nerror = %s/werr\nenvironment = ALIEN_JOBAGENT_ID=w1;"
               "CONDOR_ID=$(Cluster).$(Process);SECRET_THING=leak\nqueue\n" % (site.agent, site.tmp, site.tmp))
        assert site.sh("condor_submit", input=sub).returncode == 0
        site.worker()
        wait_for(lambda: os.path.exists(site.tmp / "wout") and os.path.getsize(site.tmp / "wout") > 0, 60, "output")
        wait_for(lambda: site.count("JobStatus==1 || JobStatus==2") == 0, 30, "done")
        env = dict(line.split("=", 1) for line in (site.tmp / "wout").read_text().splitlines() if "=" in line)
        assert env["ALIEN_JOBAGENT_ID"] == "w1" and env["CONDOR_ID"] == "1.0"
        assert "SECRET_THING" not in env, "only ALIEN_* and a minimal environment pass"
        assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin" and "HOME" in env and "USER" in env and "LANG" in env
        if not os.path.isdir("/cvmfs/alice.cern.ch"):
            assert "/cvmfs/alice.cern.ch is not available" in (site.tmp / "werr").read_text()
    finally:
        site.stop_workers()
        site.stop()


def test_condor_rm_forms(site):
    alien_submit(site, n=2)
    alien_submit(site, n=1)
    alien_submit(site, n=1)
    r = site.sh("condor_rm 1.1")
    assert r.returncode == 0 and r.stdout == "Job 1.1 marked for removal\n"
    r = site.sh("condor_rm 1.1")
    assert r.returncode == 1 and r.stderr == "\nCouldn't find/remove all jobs matching constraint (ClusterId == 1 && ProcId == 1)\n"
    r = site.sh("condor_rm -constraint 'ClusterId == 2'")
    assert r.returncode == 0 and r.stdout == "Jobs matching constraint (ClusterId == 2) have been marked for removal\n"
    # a removed job with a task in Work Queue shows (as X) until the manager has cancelled it
    wait_for(lambda: site.sh("condor_q -af ClusterId ProcId").stdout == "1 0\n3 0\n", 10, "the removals")
    user = __import__("getpass").getuser()
    r = site.sh("condor_rm %s" % user)
    assert r.returncode == 0 and r.stdout == 'All jobs of user "%s" have been marked for removal\n' % user
    wait_for(lambda: site.sh("condor_q -af ClusterId").stdout == "", 10, "an empty queue")
    r = site.sh("condor_rm nobody_here")
    assert r.returncode == 1 and r.stderr == "\nCouldn't find/remove all jobs of user nobody_here\n"


def test_backend_down_answers_as_htcondor(site):
    """With the manager stopped each shim behaves as HTCondor 23.9 with its schedd off: nothing on stdout,
    HTCondor's error on stderr, HTCondor's exit status; the message names the manager's configured address."""
    alien_submit(site, n=1)
    site.stop()
    host = __import__("socket").gethostname().split(".")[0]
    addr = "<127.0.0.1:%d?...>" % site.port
    # CONDOR.pm counts lines: it must count 0, not the lines of an error message
    assert site.sh("condor_q -format '%s\\n' OWNER -constraint 'JobStatus==1 || JobStatus==2' | wc -l").stdout.strip() == "0"
    for cmd in ("condor_q", "condor_q -af ClusterId", "condor_q -json", "condor_q %s -totals" % getpass_user()):
        r = site.sh(cmd)
        assert (r.returncode, r.stdout) == (1, ""), cmd
        assert r.stderr.startswith("Error: Can't find address for schedd %s\n\nExtra Info: " % host) and addr in r.stderr
    r = site.sh("condor_submit", input="executable = %s\nqueue\n" % site.agent)
    assert (r.returncode, r.stdout) == (1, "") and r.stderr.startswith("\nERROR: Can't find address of local schedd\n")
    assert addr in r.stderr
    r = site.sh("condor_rm 1")
    assert (r.returncode, r.stdout) == (1, "") and r.stderr.startswith("condor_rm: Can't find address for schedd %s\n" % host)
    for cmd in ("condor_status -schedd -af totalRunningJobs totalIdleJobs", "condor_status -schedd"):
        r = site.sh(cmd)  # HTCondor with the schedd off and the collector up: nothing at all, exit 0
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), cmd


def getpass_user():
    return __import__("getpass").getuser()


def test_htcondor_output_rules_and_macros(site):
    """JAliEn's local-pool count, dask-jobqueue's macros, /dev/null for Out/Err, -totals | tail -n 1 and the
    unused-line warning: the reference capture's command lines give the reference answers."""
    r = site.sh("condor_submit", input="executable = %s\nqueue 2\n" % site.agent)
    assert r.returncode == 0
    # JAliEn's local-pool mode counts these lines (it counted zero, and would have submitted without end)
    assert site.sh("condor_q -const 'JobStatus < 3' -af JobStatus -format local_pool GridResource").stdout == \
        "1 local_pool\n1 local_pool\n"
    assert site.sh("condor_q -af Out Err").stdout == "/dev/null /dev/null\n" * 2
    logs = site.tmp / "logs"
    logs.mkdir()
    sub = ('MY.JobId = "$(ClusterId).$(ProcId)"\nLogDirectory = %s\nOutput = $(LogDirectory)/worker-$F(MY.JobId).out\n'
           'Error = $(LogDirectory)/worker-$F(MY.JobId).err\nLog = $(LogDirectory)/worker-$(ClusterId).log\n'
           'bogus_cmd = 3\nexecutable = %s\nqueue\n' % (logs, site.agent))
    r = site.sh("condor_submit", input=sub)
    assert r.returncode == 0 and r.stdout == "Submitting job(s).\n1 job(s) submitted to cluster 2.\n"
    assert r.stderr == "WARNING: the line 'bogus_cmd = 3' was unused by condor_submit. Is it a typo?\n"
    assert site.sh("condor_q 2 -af ClusterId ProcId Out Err").stdout == \
        "2 0 %s/worker-2.0.out %s/worker-2.0.err\n" % (logs, logs)
    assert site.sh("condor_q %s -totals | tail -n 1" % getpass_user()).stdout == "\n"  # an empty line, as HTCondor
    site.worker()
    wait_for(lambda: (logs / "worker-2.0.out").exists() and "agent" in (logs / "worker-2.0.out").read_text(), 60,
             "job 2.0's output under its expanded name")
    assert "000 (002.000.000)" in (logs / "worker-2.log").read_text()


def test_stream_output_is_honoured(site, tmp_path):
    """stream_output/stream_error = true: what a running job printed reaches its output file while it runs
    (Work Queue watches the file), and stays there when the job is removed before it ends."""
    agent = tmp_path / "chatty.sh"
    agent.write_text("#!/bin/sh\necho 'first line'\necho 'to stderr' >&2\nexec sleep 300\n")
    agent.chmod(0o755)
    sub = ("executable = %s\noutput = %s/s.out\nerror = %s/s.err\nstream_output = true\nstream_error = True\nqueue\n"
           % (agent, tmp_path, tmp_path))
    assert site.sh("condor_submit", input=sub).returncode == 0
    assert site.sh("condor_q -af StreamOut StreamErr").stdout == "true true\n"
    site.worker()
    wait_for(lambda: (tmp_path / "s.out").exists() and (tmp_path / "s.out").read_text() == "first line\n", 60,
             "the running job's output to stream back")
    wait_for(lambda: (tmp_path / "s.err").exists() and (tmp_path / "s.err").read_text() == "to stderr\n", 60,
             "the running job's error to stream back")
    assert site.sh("condor_q -af JobStatus").stdout == "2\n"  # still running
    assert site.sh("condor_rm 1").returncode == 0
    wait_for(lambda: site.sh("condor_q -af ClusterId").stdout == "", 30, "the removal")
    assert (tmp_path / "s.out").read_text() == "first line\n"
