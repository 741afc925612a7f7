"""The Slurm executor's own logic: the batch script (run by /bin/sh against a stand-in scontrol that records
its calls: the real cluster runs it in tests/integration/test_slurm.py), the comment, squeue's answers."""

import os
import subprocess

import pytest

from persistjob import contract as X
from persistjob.slurm import _json_row, batch_script, time_limit_minutes
from persistjob.submit import SubmitOptions
from persistjob.telemetry import comment, parse_comment

TEMPLATE = os.path.join(os.path.dirname(__file__), "..", "..", "templates", "persistent-job.slurm")


def test_the_template_is_what_submit_writes():
    o = SubmitOptions(store="s3://persistjob-state/jobs", payload=("/shared/sim/run.sh", "--steps", "1000"), name="sim",
                      lifetime="12h", interval="1h", output_dir="/shared/sim/logs")
    script = batch_script(o, "0123456789ab", bundle="/home/user/.cache/persistjob/bundles/persistjob.pyz",
                          exports=[("AWS_ENDPOINT_URL_S3", "https://s3.example.org"),
                                   ("AWS_SHARED_CREDENTIALS_FILE", "/home/user/.cache/persistjob/credentials/"
                                    "0a1b2c3d4e5f6a7b/persistjob-credentials")],
                          partition="batch", account="myproject")
    template = [ln for ln in open(TEMPLATE).read().split("\n") if not ln.startswith("##")]
    assert script.split("\n") == template
    assert "#SBATCH --time=723" in script and "#SBATCH --signal=B:USR1@90" in script
    assert time_limit_minutes(4, 5) == 3 and time_limit_minutes(12 * 3600, 60) == 723


@pytest.fixture
def fake_slurm(tmp_path):
    """A stand-in scontrol (records its arguments; 'show config' prints $FAKE_CONFIG) and python3 (exits $RC)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n[ "$1 $2" = "show config" ] && '
                                     'printf "%s\\n" "$FAKE_CONFIG"\nexit 0\n')
    (bindir / "python3").write_text('#!/bin/sh\necho python3 >> "$CALLS"\nexit "$RC"\n')
    for f in bindir.iterdir():
        f.chmod(0o755)

    def run(rc, config="RequeueExit             = (null)", forever=True, env=None):
        o = SubmitOptions(store="s3://b/jobs", payload=("true",), name="t", output_dir=str(tmp_path / "out"),
                          forever=forever, release_limit=2, release_base=60, retry_base=30)
        script = tmp_path / "job.sh"
        script.write_text(batch_script(o, "n0nce", bundle="/x/persistjob.pyz"))
        calls = tmp_path / "calls"
        if calls.exists():
            calls.unlink()
        e = dict(PATH="%s:/usr/bin:/bin" % bindir, SLURM_JOB_ID="42", SLURM_CLUSTER_NAME="c", RC=str(rc),
                 CALLS=str(calls), FAKE_CONFIG=config, **(env or {}))
        r = subprocess.run(["/bin/sh", str(script)], env=e, capture_output=True, text=True, timeout=30)
        return r.returncode, (calls.read_text().splitlines() if calls.exists() else [])

    return run


def test_the_batch_script_follows_the_contract(fake_slurm, tmp_path):
    import time

    ran = ["python3"]
    assert fake_slurm(85) == (0, ran + ["show config", "requeue 42"])  # no RequeueExit: the job requeues itself
    assert fake_slurm(85, config="RequeueExit             = 85") == (85, ran + ["show config"])  # the site's requeue
    assert fake_slurm(85, config="RequeueExit             = 1,85-90") == (0, ran + ["show config", "requeue 42"])
    assert fake_slurm(1) == (0, ran + ["show config", "requeue 42"])
    assert fake_slurm(0, forever=False) == (0, ran)  # done: the job ends
    assert fake_slurm(0) == (0, ran + ["show config", "requeue 42"])  # a forever job runs again
    assert fake_slurm(78) == (0, ran + ["requeuehold 42"])
    notbefore = tmp_path / "out" / ".persistjob-slurm" / "42.notbefore"

    def later(rc):
        """(the delay the run asked for, what it called)."""
        t = int(time.time())
        code, calls = fake_slurm(rc)
        assert code == 0 and calls == ran + ["requeue 42"], calls
        delay = int(notbefore.read_text()) - t
        notbefore.unlink()  # (as if the time had come)
        return delay

    # 75: not before 30 s, doubling with each consecutive 75; any other run resets the count
    assert later(75) in (30, 31) and later(75) in (60, 61) and later(137) in (120, 121)  # unknown codes: try later
    fake_slurm(85)
    assert later(75) in (30, 31)
    # a run that starts before its time requeues at once, without running anything
    fake_slurm(75)
    assert fake_slurm(85) == (0, ["requeue 42"])
    notbefore.unlink()
    # 79: run again after 60 s, 120 s; held after --release-limit (2) such releases
    assert later(79) in (60, 61) and later(79) in (120, 121)
    assert fake_slurm(79) == (0, ran + ["requeuehold 42"])


def test_every_contract_code_has_its_branch():
    o = SubmitOptions(store="s3://b/jobs", payload=("true",))
    script = batch_script(o, "n", bundle="/x.pyz")
    branch = {X.COMPLETE: "done_run", X.RERUN: "rerun", X.RERUN_LATER: "rerun_later", X.HOLD: "hold",
              X.HOLD_RELEASE: "hold_release"}
    for code, rule in X.TABLE.items():
        line = next(ln for ln in script.splitlines() if ln.strip().startswith(tuple("%s" % c for c in X.codes(rule.action)))
                    and ")" in ln)
        assert str(code) in line.split(")")[0].strip().split("|") and line.split(")")[1].split(";")[0].strip() == branch[rule.action]


def test_comment_round_trip_and_squeue_json_shapes():
    text = comment({"id": "ab12", "store": "s3://b/j?endpoint=https://s3:9000", "err": 'a b "c"', "gen": 3})
    assert len(text.split()) == 5 and parse_comment(text) == {  # one word per field: values never split
        "id": "ab12", "store": "s3://b/j?endpoint=https://s3:9000", "err": 'a b "c"', "gen": "3"}
    assert parse_comment("something else") is None and parse_comment("") is None
    old = {"job_id": 7, "array_job_id": 0, "array_task_id": None, "job_state": "RUNNING", "state_reason": "None",
           "start_time": 100, "submit_time": 90, "name": "n", "comment": "persistjob id=x", "restart_cnt": 2,
           "cluster": "c"}
    new = dict(old, job_state=["RUNNING"], start_time={"set": True, "infinite": False, "number": 100},
               array_task_id={"set": False, "infinite": False, "number": 0}, restart_cnt={"set": True, "number": 2})
    for j in (old, new):
        row = _json_row(j)
        assert (row["id"], row["state"], row["start"], row["restarts"], row["task"]) == (7, "RUNNING", 100, 2, None)
