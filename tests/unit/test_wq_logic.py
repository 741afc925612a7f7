"""Pure logic of the Work Queue executor: submit language, -format/-af, job ads, worker command lines."""

import pytest

from persistjob.errors import ConfigError
from persistjob.wq.shims import commands as shims
from persistjob.wq.shims import printmask as pm
from persistjob.wq.shims.ads import environment_string
from persistjob.wq.shims.submitfile import SubmitError, parse_environment, parse_submit, split_args
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
    jobs = parse_submit(text, str(tmp_path), "pj").procs(7)
    assert [j["args"] for j in jobs] == [["-c", "7", "-p", "0"], ["-c", "7", "-p", "1"], ["second"]]
    assert jobs[1]["env"] == {"CONDOR_ID": "7.1", "K": "v"}
    assert jobs[0]["output"] == str(tmp_path / "out.7.0")
    assert jobs[0]["attrs"]["Custom"] == '"hello"'
    assert jobs[0]["cmd"] == str(exe)


# dask-jobqueue 0.9's HTCondorJob header (log_directory set), as it writes it
DASK_SUB = """MY.DaskWorkerName = "htcondor--$F(MY.JobId)--"
batch_name = dask-worker
RequestCpus = MY.DaskWorkerCores
RequestMemory = floor(MY.DaskWorkerMemory / 1048576)
RequestDisk = floor(MY.DaskWorkerDisk / 1024)
MY.JobId = "$(ClusterId).$(ProcId)"
MY.DaskWorkerCores = 1
MY.DaskWorkerMemory = 2000000000
MY.DaskWorkerDisk = 1000000000
LogDirectory = /home/pj/logs
Output = $(LogDirectory)/worker-$F(MY.JobId).out
Error = $(LogDirectory)/worker-$F(MY.JobId).err
Log = $(LogDirectory)/worker-$(ClusterId).log
Stream_Output = True
Stream_Error = True

Arguments = "-c 'python -m distributed.cli.dask_worker tcp://127.0.0.1:1 --name dummy-name'"
Executable = /bin/sh

Queue
"""


def test_submit_language_is_htcondors():
    # the reference capture: worker-15.0.out on HTCondor 23.9 (the literal $F(...) stayed before)
    (job,) = parse_submit(DASK_SUB, "/tmp", "pj").procs(15)
    assert (job["output"], job["error"], job["log"]) == \
        ("/home/pj/logs/worker-15.0.out", "/home/pj/logs/worker-15.0.err", "/home/pj/logs/worker-15.log")
    assert job["attrs"]["DaskWorkerName"] == '"htcondor--15.0--"' and job["attrs"]["JobId"] == '"15.0"'
    assert job["attrs"]["StreamOut"] == "true" and job["attrs"]["JobBatchName"] == '"dask-worker"'
    c = pm.to_classad({"_custom": job["attrs"]})
    assert pm.evaluate("RequestMemory", c) == 1907 and pm.evaluate("RequestCpus", c) == 1
    text = ("executable = /bin/true\narguments = $(name) $(Step) $(Row) $INT(n,%03d) $(missing:dflt) $$(Memory)\n"
            "n = 7\nqueue 2 name in (a, b)\narguments = $Fn(file) $Fx(file) $Fpd(file)\nfile = /d/e/f.txt\nqueue\n")
    d = parse_submit(text, "/tmp", "pj")
    assert [j["args"] for j in d.procs(3)] == [["a", "0", "0", "007", "dflt", "$$(Memory)"],
                                             ["a", "1", "0", "007", "dflt", "$$(Memory)"],
                                             ["b", "0", "1", "007", "dflt", "$$(Memory)"],
                                             ["b", "1", "1", "007", "dflt", "$$(Memory)"], ["f", ".txt", "e/"]]
    assert d.warnings == []


def test_queue_from_and_matching(tmp_path):
    (tmp_path / "items.txt").write_text("x 1\ny 2\n")
    for n in ("a.dat", "b.dat"):
        (tmp_path / n).write_text("")
    d = parse_submit("executable = /bin/true\narguments = $(k) $(v)\nqueue k, v from %s\n" % (tmp_path / "items.txt"),
                     str(tmp_path), "pj")
    assert [j["args"] for j in d.procs(1)] == [["x", "1"], ["y", "2"]]
    inline = parse_submit("executable = /bin/true\narguments = $(k)\nqueue k from (\n  p\n  q\n)\n", "/tmp", "pj")
    assert [j["args"] for j in inline.procs(1)] == [["p"], ["q"]]
    import os
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        m = parse_submit("executable = /bin/true\narguments = $(Item)\nqueue matching *.dat\n", str(tmp_path), "pj")
    finally:
        os.chdir(cwd)
    assert sorted(j["args"][0] for j in m.procs(1)) == ["a.dat", "b.dat"]


def test_unused_lines_warn_as_htcondor_does():
    # what condor_submit 23.9 prints on stderr for these (captured on the sandbox pool)
    d = parse_submit("executable = /bin/true\nbogus_cmd = 3\nLogDir = /tmp\nOutput = $(LogDir)/x.out\n"
                     "queue 1 name in (a)\n", "/tmp", "pj")
    assert d.warnings == ["WARNING: the Queue variable 'name' was unused by condor_submit. Is it a typo?",
                          "WARNING: the line 'bogus_cmd = 3' was unused by condor_submit. Is it a typo?"]
    d = parse_submit("executable = /bin/true\ny = abc\nx = $INT(y)\nqueue\n", "/tmp", "pj")  # never expanded
    assert d.warnings == ["WARNING: the line 'y = abc' was unused by condor_submit. Is it a typo?",
                          "WARNING: the line 'x = $INT(y)' was unused by condor_submit. Is it a typo?"]


@pytest.mark.parametrize("text,msg,parsing", [
    ("output = x\nqueue\n", "No 'executable' parameter was provided", False),
    ("executable = /bin/true\nuniverse = martian\nqueue\n", "I don't know about the 'martian' universe.", False),
    ("executable = /nonexistent\nqueue\n", "Executable file /nonexistent does not exist", False),
    ("executable = /bin/true\nfoo bar\nqueue\n",
     "on Line 2 of submit file: \n\nERROR: Failed to parse command file (line 2).", True),
    ("executable = /bin/true\nqueue a from /nonexist\n", "on Line 2 of submit file: can't open file /nonexist: "
     "No such file or directory\n\nERROR: Failed to parse command file (line 2).", True),
    ("executable = /bin/true\n", "on Line 1 of submit file: no queue statement\n\nERROR: Failed to parse command "
     "file (line 1).", True),
    ("executable = /bin/true\nstream_output = maybe\nqueue\n", "stream_output = maybe: expected true or false", False),
])
def test_submit_file_errors(text, msg, parsing):
    with pytest.raises(SubmitError) as e:
        parse_submit(text, "/tmp", "pj")
    assert str(e.value) == msg and e.value.parsing == parsing


def test_cmd_is_executable_and_grid_resource_and_units(tmp_path):
    (job,) = parse_submit("cmd = /bin/true\nuniverse = grid\ngrid_resource = arc https://ce\nrequest_memory = 2 GB\n"
                          "request_disk = 1G\nqueue\n", "/tmp", "pj").procs(1)
    assert job["cmd"] == "/bin/true" and job["attrs"]["GridResource"] == '"arc https://ce"'
    assert job["attrs"]["RequestMemory"] == "2048" and job["attrs"]["RequestDisk"] == "1048576"


def ad(**kw):
    base = {"ClusterId": 4, "ProcId": 0, "JobStatus": 2, "Owner": "pj", "Cmd": "/a.sh", "Environment": "", "_custom": {}}
    base.update(kw)
    return pm.to_classad(base)


def test_printf_values():
    c = ad(_custom={"Requests": "40 + 2", "Name": '"x y"'})
    assert pm.printf("%d ", pm.evaluate("ClusterId", c)) == "4 "
    assert pm.printf("%s \\n", pm.evaluate("Cmd", c)) == "/a.sh \n"
    assert pm.printf("%s\\n", pm.evaluate("OWNER", c)) == "pj\n"  # attribute names are case-insensitive
    assert pm.printf("%s\\n", pm.evaluate("Missing", c)) == ""  # undefined prints nothing ...
    assert pm.printf("local_pool", pm.evaluate("Missing", c)) == "local_pool"  # ... unless there is no conversion
    assert pm.printf("[%v]", pm.evaluate("Missing", c)) == "[undefined]"
    assert pm.printf("[%V]", pm.evaluate("Owner", c)) == '["pj"]'
    assert pm.printf("%d", pm.evaluate("Owner", c)) == ""
    assert pm.printf("%s", pm.evaluate("ProcId", c)) == "0"
    assert pm.printf("%V", pm.evaluate("Name", c)) == '"x y"'
    assert pm.printf("%5.1f|", pm.evaluate("Requests", c)) == " 42.0|"
    assert pm.printf("%x", pm.evaluate("Requests", c)) == "2a"
    assert pm.af_text(pm.evaluate("GridResource", c)) == "undefined"
    assert pm.af_text(pm.evaluate("Requests * 2", c)) == "84"
    assert pm.af_text(pm.evaluate("JobStatus == 2", c)) == "true"
    assert pm.is_true("JobStatus==1 || JobStatus==2", c) and not pm.is_true("JobStatus < 2", c)


def _q(args, ads):
    items, mods, i = [], "", 0
    while i < len(args):
        i, m = pm.parse_output_option(args, i, items)
        mods = mods if m is None else m
    return pm.render(items, mods, ads)


# Jobs as in the capture of 2026-11-29 on the sandbox pool (HTCondor 23.9.6): 147.0 and 147.1 with
# Out = /tmp/ref/w-147.N.out and JobId, 148.0 without output.  Each expected string is what real condor_q printed.
def _ref_ads():
    return [ad(ClusterId=147, ProcId=0, JobStatus=1, Out="/tmp/ref/w-147.0.out", _custom={"JobId": '"147.0"'}),
            ad(ClusterId=147, ProcId=1, JobStatus=1, Out="/tmp/ref/w-147.1.out", _custom={"JobId": '"147.1"'}),
            ad(ClusterId=148, ProcId=0, JobStatus=1, Out="/dev/null")]


@pytest.mark.parametrize("args,expected", [
    (["-af", "JobStatus", "-format", "local_pool", "GridResource"], "1 local_pool\n1 local_pool\n1 local_pool\n"),
    (["-format", "%s|", "Nope", "-format", "%d\\n", "ClusterId"], "147\n147\n148\n"),
    (["-format", "[%v]", "Nope", "-format", "[%V]", "Owner", "-format", "\\n", "ClusterId"],
     '[undefined]["pj"]\n' * 3),
    (["-af", "ClusterId", "-format", "X%sY", "Owner", "-af", "ProcId"], "147 XpjY 0\n147 XpjY 1\n148 XpjY 0\n"),
    (["-format", "F%d", "ClusterId", "-af", "ProcId", "JobStatus"], "F147 0 1\nF147 1 1\nF148 0 1\n"),
    (["-af", "ClusterId", "-format", "%s", "Nope", "-af", "ProcId"], "147  0\n147  1\n148  0\n"),
    (["-af:,", "ClusterId", "ProcId", "Owner"], "147, 0, pj\n147, 1, pj\n148, 0, pj\n"),
    (["-af:t", "ClusterId", "ProcId", "Owner"], "147\t0\tpj\n147\t1\tpj\n148\t0\tpj\n"),
    (["-af:l", "ClusterId", "ProcId", "Owner"],
     "ClusterId = 147 ProcId = 0 Owner = pj\nClusterId = 147 ProcId = 1 Owner = pj\nClusterId = 148 ProcId = 0 Owner = pj\n"),
    (["-af:j", "Owner"], "147.0 pj\n147.1 pj\n148.0 pj\n"),
    (["-af:r", "Owner", "Out", "JobId"],
     '"pj" "/tmp/ref/w-147.0.out" "147.0"\n"pj" "/tmp/ref/w-147.1.out" "147.1"\n"pj" "/dev/null" undefined\n'),
    (["-af:hj", "Owner", "Out"], " ID      Owner Out                 \n 147.0   pj    /tmp/ref/w-147.0.out\n"
     " 147.1   pj    /tmp/ref/w-147.1.out\n 148.0   pj    /dev/null           \n"),
    (["-af:ln", "Owner", "ProcId"], "Owner = pj\n ProcId = 0\nOwner = pj\n ProcId = 1\nOwner = pj\n ProcId = 0\n"),
    (["-af:V", "Owner", "ProcId"], '"pj" 0\n"pj" 1\n"pj" 0\n'),
    (["-af", "ClusterId+1", 'strcat(Owner,"!")', "Nope"], "148 pj! undefined\n148 pj! undefined\n149 pj! undefined\n"),
    (["-af:lh", "ClusterId", "Owner"], "ClusterId Owner\n147       pj   \n147       pj   \n148       pj   \n"),
    (["-af:,h", "ClusterId", "Owner"], "ClusterId, Owner\n147      , pj   \n147      , pj   \n148      , pj   \n"),
    (["-af:j", "ClusterId", "Owner", "-format", "<%d>", "ProcId"], "147.0 147 pj <0>\n147.1 147 pj <1>\n148.0 148 pj <0>\n"),
    (["-format", "%-5s|", "Owner", "-format", "%5.1f|", "ClusterId", "-format", "%x\\n", "ProcId"],
     "pj   |147.0|0\npj   |147.0|1\npj   |148.0|0\n"),
    (["-format", "lit\\n", "Nope"], "lit\nlit\nlit\n"),
])
def test_output_options_print_what_htcondor_prints(args, expected):
    assert _q(args, _ref_ads()) == expected


def test_autoformat_header_pads_columns():
    assert _q(["-af:h", "ClusterId", "JobStatus"], [ad(), ad(ClusterId=5, JobStatus=1)]) == \
        "ClusterId JobStatus\n4         2        \n5         1        \n"


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


def test_item_data_as_htcondor2_23_gives_it(tmp_path):
    """htcondor2 23.9 (Debian trixie, the sandbox pool's) gives each item's text, not a dict: the variables
    are split as condor_submit splits them; and its itemdata() crashes on a file it cannot open, so that is
    checked first."""
    from persistjob.wq.shims.submitfile import SubmitDescription

    class Sub:
        def __init__(self, items):
            self.items = items

        def itemdata(self):
            return iter(self.items)

    assert SubmitDescription._items(Sub(["x 1", "y,2"]), "k, v from (", 3) == [{"k": "x", "v": "1"}, {"k": "y", "v": "2"}]
    assert SubmitDescription._items(Sub(["a", "b"]), "2 name in (a, b)", 3) == [{"name": "a"}, {"name": "b"}]
    assert SubmitDescription._items(Sub(["a b"]), "in (a b)", 3) == [{"Item": "a b"}]
    with pytest.raises(SubmitError, match="can't open file /nonexistent/items: No such file"):
        SubmitDescription._items(Sub([]), "k from /nonexistent/items", 4)
