"""CLI parsing through the real entry point (no storage is touched)."""

import os

import pytest

from persistjob import cli
from persistjob.options import RUN_OPTIONS, RunOptions, given, run_argv, run_options
from persistjob.errors import reason_from_stderr as _last_error
from persistjob.errors import ConfigError


def run_main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,msg", [
    (["run", "--store", "file:///tmp/x"], "no payload"),
    (["run", "--", "true"], "--store"),
    (["run", "--store", "file:///tmp/x", "--mode", "magic", "--", "true"], "invalid choice"),
    (["run", "--store", "file:///tmp/x", "--lifetime", "0", "--", "true"], "--lifetime must be positive"),
    (["run", "--store", "file:///tmp/x", "--chunk-size", "1k", "--", "true"], "--chunk-size"),
    (["run", "--store", "file:///tmp/x", "--keep", "0", "--", "true"], "at least 1"),
    (["run", "--store", "file:///tmp/x", "--checkpoint-signal", "SIGNOPE", "--", "true"], "unknown signal"),
    (["local", "--store", "file:///tmp/x", "--", "true"], "--max-runs"),
    (["checkpoint", "ls", "--store", "file:///tmp/x"], "--job-id"),
    (["checkpoint", "explode"], "invalid choice"),
    (["nonsense"], "invalid choice"),
    (["checkpoint", "ls", "--store", "file:///tmp/x", "--job-id", "j", "--", "x"], "only for run, local and submit"),
])
def test_usage_errors_are_one_line_78(capsys, argv, msg):
    code, out, err = run_main(capsys, *argv)
    assert code == 78
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("persistjob: error: ") and msg in lines[0], err


def test_split_and_forward():
    assert cli._split_payload(["run", "--store", "u", "--", "a", "--", "b"]) == (["run", "--store", "u"], ["a", "--", "b"])
    a = cli.build_parser().parse_args(["local", "--store", "u", "--max-runs", "3", "--name=x", "--interval", "1s",
                                       "--checkpoint-dir", "d", "--keep", "3", "--chunk-size", "2M"])
    # forwarded from the parsed values: the verb's own options and defaults stay behind
    assert run_argv(given(a, skip=("job_id", "checkpoint_dir"))) == ["--store", "u", "--interval", "1s",
                                                                     "--chunk-size", "2M"]


@pytest.mark.parametrize("argv,unknown", [
    (["local", "--store", "file:///tmp/x", "--max-run", "1", "--", "true"], "--max-run"),
    (["local", "--store", "file:///tmp/x", "--max-runs", "1", "--inter", "5", "--", "true"], "--inter"),
    (["run", "--store", "file:///tmp/x", "--life", "1h", "--", "true"], "--life"),
    (["submit", "--store", "s3://b/p", "--dry", "--", "true"], "--dry"),
    (["wq", "submit", "--store", "s3://b/p", "--cou", "2", "--", "true"], "--cou"),
    (["wq", "manager", "--po", "9"], "--po"),
    (["checkpoint", "ls", "--store", "file:///tmp/x", "--job-id", "j", "--js"], "--js"),
    (["status", "--const", "true"], "--const"),
])
def test_abbreviations_are_unknown_options_named_at_once(capsys, argv, unknown, tmp_path, monkeypatch):
    """argparse would take a prefix for the whole option; here it is refused before anything runs."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 78 and len(lines) == 1, err
    assert "unrecognized arguments: %s" % unknown in lines[0] and not out
    assert os.listdir(tmp_path) == [], "nothing ran"


def test_run_options_from_cli():
    a = cli.build_parser().parse_args(["run", "--store", "file:///s", "--interval", "10m", "--lifetime", "2h",
                                       "--mode", "signal", "--checkpoint-signal", "USR2", "--chunk-size", "256k"])
    o = run_options(a, ["payload", "arg"])
    assert (o.interval, o.lifetime, o.mode, o.chunk_size, o.payload) == (600, 7200, "signal", 256 << 10, ("payload", "arg"))
    import signal

    assert o.checkpoint_signal == signal.SIGUSR2
    assert run_argv(o.values()) == ["--store", "file:///s", "--lifetime", "2h", "--interval", "10m", "--mode", "signal",
                                    "--chunk-size", "256k", "--checkpoint-signal", "USR2"]


def test_a_switch_option_is_forwarded_as_a_bare_flag_and_checked():
    for verb in (["run"], ["local", "--max-runs", "2"], ["submit"]):
        a = cli.build_parser().parse_args(verb + ["--store", "file:///s", "--mode", "criu", "--criu-cold-start"])
        o = run_options(a, ["payload"])
        assert o.criu_cold_start is True
        assert run_argv(o.values()) == ["--store", "file:///s", "--mode", "criu", "--criu-cold-start"]
    assert "--criu-cold-start" not in run_argv(RunOptions(["x"], store="file:///s", mode="criu").values())
    with pytest.raises(ConfigError, match="--criu-cold-start applies to --mode criu only"):
        RunOptions(["x"], store="file:///s", criu_cold_start=True)


def test_run_options_are_declared_once():
    """RunOptions' attributes, the parsers of run/local/submit/wq submit and the defaults all come from RUN_OPTIONS."""
    assert set(RunOptions.__annotations__) == {"payload"} | {o.dest for o in RUN_OPTIONS}
    defaults = RunOptions(["x"], store="file:///s")
    assert all(getattr(defaults, o.dest) == o.default for o in RUN_OPTIONS if o.dest != "store")
    for verb in (["run"], ["local"], ["submit"], ["wq", "submit"]):
        p = cli.build_parser()
        helptext = _subparser(p, verb).format_help()
        for o in RUN_OPTIONS:
            if o.dest != "job_id" or verb == ["run"]:
                assert o.flag in helptext, (verb, o.flag)


def _subparser(p, words):
    import argparse

    for w in words:
        p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[w]
    return p


@pytest.mark.parametrize("secs", [0.5, 1, 59, 60, 90, 3600, 5400, 43200, 86400 + 61, 2.25])
def test_durations_round_trip(secs):
    from persistjob.identity import parse_duration
    from persistjob.options import format_duration

    assert parse_duration(format_duration(secs)) == secs


def test_last_error_line():
    assert _last_error(["x\n", "persistjob: error: no job ID: give --job-id\n"]) == "no job ID: give --job-id"
    assert _last_error(["2026 persistjob[1] exit 79 (crash loop): crash loop: payload exited 3\n"]) == \
        "crash loop: payload exited 3"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and "persistjob" in capsys.readouterr().out
