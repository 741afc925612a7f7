"""CLI parsing through the real entry point (no storage is touched)."""

import pytest

from persistjob import cli
from persistjob.errors import reason_from_stderr as _last_error


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
    assert cli._forwarded_run_args(["--store", "u", "--max-runs", "3", "--name=x", "--interval", "1s",
                                    "--checkpoint-dir", "d"]) == ["--store", "u", "--interval", "1s"]


def test_run_options_from_cli():
    a = cli.build_parser().parse_args(["run", "--store", "file:///s", "--interval", "10m", "--lifetime", "2h",
                                       "--mode", "signal", "--checkpoint-signal", "USR2", "--chunk-size", "256k"])
    o = cli._run_options(a, ["payload", "arg"])
    assert (o.interval, o.lifetime, o.mode, o.chunk_size, o.payload) == (600, 7200, "signal", 256 << 10, ("payload", "arg"))
    import signal

    assert o.checkpoint_signal == signal.SIGUSR2


def test_last_error_line():
    assert _last_error(["x\n", "persistjob: error: no job ID: give --job-id\n"]) == "no job ID: give --job-id"
    assert _last_error(["2026 persistjob[1] exit 79 (crash loop): crash loop: payload exited 3\n"]) == \
        "crash loop: payload exited 3"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and "persistjob" in capsys.readouterr().out
