"""Pure logic of the Work Queue executor: submit language, -format/-af, job ads, worker command lines."""

import io

import pytest

from persistjob.errors import ConfigError
from persistjob.wq.shims import commands as shims
from persistjob.wq.shims.ads import environment_string
from persistjob.wq.shims.submitfile import SubmitError, finalize, parse_environment, parse_submit, split_args
from persistjob.wq.workers import WorkerEnv, worker_command


def test_arguments_old_and_new_syntax():
    assert split_args("a b  c") == ["a", "b", "c"]
    assert split_args('"a \'b c\' d"') == ["a", "b c", "d"]
    assert split_args('"\'it\'\'s\' \'\'"') == ["it's", ""]
    from persistjob.quoting import condor_quote_args

    for args in (["a b", "it's", "", 'q"q'], ["plain"]):
        assert split_args(condor_quote_args(args)) == args  # what submit writes, the shim reads back
    assert split_args('"say ""hi"""') == ['say', '"hi"']
    assert split_args("") == []
    with pytest.raises(SubmitError, match="Unterminated double-quote"):
        split_args('"a b')


def test_environment_old_and_new_syntax():
    assert parse_environment("A=1;B=x y;C=") == {"A": "1", "B": "x y", "C": ""}
    assert parse_environment("\"ALIEN_JOBAGENT_ID='j1' X='a b' Y=2\"") == {"ALIEN_JOBAGENT_ID": "j1", "X": "a b", "Y": "2"}
    with pytest.raises(SubmitError) as e:
        parse_environment('"A=1 B=2')
    assert str(e.value) == "Unterminated double-quote.\nThe environment you specified was: '\"A=1 B=2'"
    with pytest.raises(SubmitError, match="missing '='"):
        parse_environment("A=1;junk")
    assert environment_string({"B": "2", "A": "x y"}) == "A='x y' B=2"


def test_submit_file_macros_queue_counts_and_custom_attributes(tmp_path):
    exe = tmp_path / "agent.sh"
    exe.write_text("#!/bin/sh\n")
    text = ("# AliEn\nexecutable = %s\narguments = -c $(Cluster) -p $(Process)\noutput = out.$(Cluster).$(Process)\n"
            "environment = CONDOR_ID=$(Cluster).$(Process);K=v\nmyvar = hello\n+Custom = \"$(myvar)\"\n"
            "queue 2\narguments = second\nqueue\n" % exe)
    procs = parse_submit(text, str(tmp_path), "pj")
    jobs = finalize(procs, 7)
    assert [j["args"] for j in jobs] == [["-c", "7", "-p", "0"], ["-c", "7", "-p", "1"], ["second"]]
    assert jobs[1]["env"] == {"CONDOR_ID": "7.1", "K": "v"}
    assert jobs[0]["output"] == str(tmp_path / "out.7.0")
    assert jobs[0]["attrs"]["Custom"] == '"hello"'
    assert jobs[0]["cmd"] == str(exe)


@pytest.mark.parametrize("text,msg", [
    ("output = x\nqueue\n", "No 'executable' parameter was provided"),
    ("executable = /bin/true\nuniverse = martian\nqueue\n", "I don't know about the 'martian' universe."),
    ("executable = /nonexistent\nqueue\n", "Executable file /nonexistent does not exist"),
    ("executable = /bin/true\nqueue 3 from list.txt\n", "not supported"),
])
def test_submit_file_errors(text, msg):
    with pytest.raises(SubmitError, match=msg):
        parse_submit(text, "/tmp", "pj")


def test_cmd_is_executable_and_grid_resource(tmp_path):
    procs = parse_submit("cmd = /bin/true\nuniverse = grid\ngrid_resource = arc https://ce\nqueue\n", "/tmp", "pj")
    assert procs[0]["cmd"] == "/bin/true" and procs[0]["attrs"]["GridResource"] == '"arc https://ce"'


def ad(**kw):
    base = {"ClusterId": 4, "ProcId": 0, "JobStatus": 2, "Owner": "pj", "Cmd": "/a.sh", "Environment": "", "_custom": {}}
    base.update(kw)
    return shims.to_classad(base)


def test_printf_and_autoformat_values():
    c = ad(_custom={"Requests": "40 + 2", "Name": '"x y"'})
    assert shims.printf("%d ", shims.evaluate("ClusterId", c)) == "4 "
    assert shims.printf("%s \\n", shims.evaluate("Cmd", c)) == "/a.sh \n"
    assert shims.printf("%s\\n", shims.evaluate("OWNER", c)) == "pj\n"  # attribute names are case-insensitive
    assert shims.printf("%s\\n", shims.evaluate("Missing", c)) == ""  # undefined prints nothing
    assert shims.printf("%V", shims.evaluate("Name", c)) == '"x y"'
    assert shims.printf("%5.1f|", shims.evaluate("Requests", c)) == " 42.0|"
    assert shims.printf("%x", shims.evaluate("Requests", c)) == "2a"
    assert shims.af_text(shims.evaluate("GridResource", c)) == "undefined"
    assert shims.af_text(shims.evaluate("Requests * 2", c)) == "84"
    assert shims.af_text(shims.evaluate("JobStatus == 2", c)) == "true"
    assert shims.is_true("JobStatus==1 || JobStatus==2", c) and not shims.is_true("JobStatus < 2", c)


def test_autoformat_header_pads_columns():
    out = io.StringIO()
    shims._autoformat(out, ["ClusterId", "JobStatus"], "h", [ad(), ad(ClusterId=5, JobStatus=1)])
    assert out.getvalue() == "ClusterId JobStatus\n4         2        \n5         1        \n"


def test_totals_line_spacing():
    ads = [{"JobStatus": 1}, {"JobStatus": 2}, {"JobStatus": 5}]
    assert shims._totals("query", ads, True) == \
        "Total for query: 3 jobs; 0 completed, 0 removed, 1 idle, 1 running, 1 held, 0 suspended "
    assert shims._totals("all users", ads, False).endswith("0 suspended")


def test_worker_env_defaults_and_command_lines(tmp_path):
    w = WorkerEnv.from_environ({"HOME": str(tmp_path)})
    assert w.master == ("127.0.0.1", 9094) and w.num_foremen == 2 and w.baseport == 9080 and w.idletimeout == 100
    assert w.workdir == str(tmp_path / ".alien_wq_tmp") and w.drain == str(tmp_path / ".alien_wq_drain")
    assert not w.singletask and not w.norespawn
    f = worker_command(w, "foreman", 1, None)
    assert f[1:4] == ["--foreman", "--foreman-port", "9081"] and f[-2:] == ["127.0.0.1", "9094"]
    w2 = WorkerEnv.from_environ({"HOME": str(tmp_path), "WQ_FOREMEN": "fm", "WQ_SINGLETASK": "1",
                                 "WQ_MASTER": "m:9", "WQ_NUM_FOREMEN": "3"})
    c = worker_command(w2, "worker", 4, "/tmp/d")
    assert c[-2:] == ["fm", "9081"] and "--cores" in c and c[1:5] == ["-d", "wq", "-o", "/tmp/d"]
    with pytest.raises(ConfigError, match="port is mandatory"):
        WorkerEnv.from_environ({"WQ_MASTER": "hostonly"})
    with pytest.raises(ConfigError, match="must be a number"):
        WorkerEnv.from_environ({"WQ_NUM_WORKERS": "many"})


def test_manager_options_bounds():
    from persistjob.wq.manager import ManagerOptions

    assert ManagerOptions(max_retries=0).max_retries == 0  # 0 means no retry, never "unlimited"
    with pytest.raises(ConfigError):
        ManagerOptions(max_retries=-1)
    with pytest.raises(ConfigError):
        ManagerOptions(job_wrapper="/nonexistent/wrapper.sh")
