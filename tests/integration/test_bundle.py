"""The bundle: the worker side in one file, run by a bare Python (``-I -S``: no site-packages at all)
against a real SeaweedFS, and checkpoints that move between installed and bundled persistjob."""

import glob
import os
import re
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import COUNTER, clean_env, job_id

pytestmark = pytest.mark.s3


def _bare_pythons():
    """Interpreters to run the bundle with: Debian's python3, and a 3.9 (the oldest supported) when here."""
    found = []
    for p in ["/usr/bin/python3"] + sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3.9")):
        if os.access(p, os.X_OK):
            v = subprocess.run([p, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True).stdout.strip()
            if v and v not in [x[1] for x in found]:
                found.append((p, v))
    return found


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bundle") / "persistjob.pyz")
    r = subprocess.run([sys.executable, "-m", "persistjob", "bundle", "-o", out], env=clean_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "runs on Python 3.9+" in r.stdout, r.stdout
    return out


def _bare_env(store, tmp_path, **extra):
    """What a site that installed nothing gives the job: the store's settings and a cache directory."""
    env = {k: v for k, v in clean_env(store.env).items() if k != "PYTHONPATH"}
    env.update(PERSISTJOB_BUNDLE_DIR=str(tmp_path / "bundle-cache"), **extra)
    return env


def test_bundle_is_small_and_trimmed(bundle):
    size = os.path.getsize(bundle)
    assert size < 5e6, size
    names = zipfile.ZipFile(bundle).namelist()
    data = [n for n in names if n.startswith("site/botocore/data/") and n.count("/") > 3]
    assert data and all(n.startswith("site/botocore/data/s3/") for n in data), "only S3's service model"
    assert not [n for n in names if n.endswith((".so", ".pyc"))]
    assert "site/persistjob/wrapper.py" in names and "site/boto3/__init__.py" in names


@pytest.mark.parametrize("python,version", _bare_pythons())
def test_bundle_runs_a_persistent_job_with_nothing_installed(bundle, s3store, tmp_path, python, version):
    """`python -I -S persistjob.pyz local`: three runs, each a fresh `run` of the bundle (not of an
    installed persistjob), resuming from S3; the payload runs under the same bare Python."""
    assert subprocess.run([python, "-I", "-S", "-c", "import boto3"], capture_output=True).returncode != 0, \
        "this interpreter must see no boto3 for the test to mean anything"
    name = "bundle-" + version + "-" + job_id()[:8]
    r = subprocess.run([python, "-I", "-S", bundle, "local", "--max-runs", "3", "--name", name, "--store", s3store.url,
                        "--lifetime", "2s", "--interval", "1s", "--", python, "-I", "-S", COUNTER],
                       env=_bare_env(s3store, tmp_path), capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.count("exited 85 (checkpointed)") == 3
    restored = [int(g) for g in re.findall(r"restored generation (\d+)", r.stdout)]
    assert len(restored) == 3 and restored[0] == 0 and 0 < restored[1] < restored[2], r.stdout
    # what it stored, an installed persistjob reads (and the other way round: see below)
    v = s3store.cli("checkpoint", "verify", "--store", s3store.url, "--job-id", "local#" + name)
    assert v.returncode == 0 and "generation" in v.stdout, v.stdout + v.stderr


def test_checkpoints_move_between_installed_and_bundled_persistjob(bundle, s3store, tmp_path):
    """Written by an installed persistjob (zstandard present), restored by the bundle on a bare Python
    (no zstandard), and back; a checkpoint written with --codec zstd is refused there in one line."""
    python = "/usr/bin/python3"
    jid = job_id()
    r = s3store.cli("local", "--max-runs", "1", "--name", jid, "--store", s3store.url, "--lifetime", "2s",
                    "--interval", "1s", "--", sys.executable, COUNTER)
    assert r.returncode == 0, r.stderr
    env = _bare_env(s3store, tmp_path)
    dest = tmp_path / "restored"
    r = subprocess.run([python, "-I", "-S", bundle, "checkpoint", "restore", "--store", s3store.url, "--job-id",
                        "local#" + jid, "--dest", str(dest)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (dest / "counter.json").exists(), r.stderr
    r = subprocess.run([python, "-I", "-S", bundle, "local", "--max-runs", "1", "--name", jid, "--store", s3store.url,
                        "--lifetime", "2s", "--interval", "1s", "--", python, COUNTER], env=env, capture_output=True,
                       text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0 and "resuming at count" in r.stdout, r.stderr
    r = s3store.cli("checkpoint", "restore", "--store", s3store.url, "--job-id", "local#" + jid, "--dest",
                    str(tmp_path / "back"), "--no-fallback")
    assert r.returncode == 0, r.stderr
    zj = job_id()
    r = s3store.cli("local", "--max-runs", "1", "--name", zj, "--store", s3store.url, "--lifetime", "2s",
                    "--interval", "1s", "--codec", "zstd", "--", sys.executable, COUNTER)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([python, "-I", "-S", bundle, "checkpoint", "restore", "--store", s3store.url, "--job-id",
                        "local#" + zj, "--dest", str(tmp_path / "z")], env=env, capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 78 and len(lines) == 1 and "needs the zstandard module" in lines[0], r.stderr
    assert not (tmp_path / "z").exists()


def _without_gfal2():
    """A bare interpreter that cannot load gfal2's bindings even from the system's dist-packages."""
    probe = "import sys; sys.path.append('/usr/lib/python3/dist-packages'); import gfal2"
    for python, _ in _bare_pythons():
        if subprocess.run([python, "-I", "-S", "-c", probe], capture_output=True).returncode != 0:
            return python
    pytest.fail("no interpreter here lacks gfal2 (a Python 3.9 from pyenv does): cannot check the refusal")


def test_grid_store_without_bindings_and_old_python_are_refused_in_one_line(bundle, tmp_path):
    python = _without_gfal2()
    env = {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}
    env["PERSISTJOB_BUNDLE_DIR"] = str(tmp_path / "cache")
    r = subprocess.run([python, "-I", "-S", bundle, "run", "--job-id", "j", "--store", "root://localhost//x",
                        "--", "/bin/true"], env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 78 and len(lines) == 1 and "python3-gfal2" in lines[0], r.stderr
    assert sorted(os.listdir(tmp_path)) == ["cache"], "nothing made on the worker for bad input"
    old = sorted(glob.glob("/root/.pyenv/versions/3.[5-8]*/bin/python3.[5-8]"))
    if old:
        r = subprocess.run([old[-1], "-I", "-S", bundle, "--version"], env=env, capture_output=True, text=True)
        assert r.returncode == 78 and "needs Python 3.9 or newer" in r.stderr, r.stderr
