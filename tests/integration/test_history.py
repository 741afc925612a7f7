"""`persistjob history`: a job's runs from the store's run records, as a table, as JSON, and drawn."""

import json
import os
import sys

from tests.conftest import COUNTER, Store

PNG = b"\x89PNG\r\n\x1a\n"


def test_history_of_a_job_that_ran_three_times(tmp_path):
    st = Store("file", "file://%s" % (tmp_path / "store"), {})
    r = st.cli("local", "--max-runs", "3", "--name", "hist", "--store", st.url, "--lifetime", "2s", "--interval", "1s",
               "--", sys.executable, COUNTER, "--quiet")
    assert r.returncode == 0, r.stderr
    base = ["--store", st.url, "--job-id", "local#hist"]
    table = st.cli("history", *base)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["RUN", "HOST", "START", "(UTC)", "DURATION"] and len(lines) == 4, table.stdout
    assert all(" 85 checkpointed " in ln for ln in lines[1:]), table.stdout
    runs = json.loads(st.cli("history", *base, "--json").stdout)
    assert [x["run"] for x in runs] == [1, 2, 3] and runs[1]["restored_generation"] == runs[0]["generation"] > 0
    assert all(x["bytes_uploaded"] > 0 for x in runs) and runs[1]["bytes_downloaded"] > 0
    png = tmp_path / "runs.png"
    drawn = st.cli("history", *base, "--plot", str(png))
    assert drawn.returncode == 0, drawn.stderr
    assert png.read_bytes().startswith(PNG) and os.path.getsize(png) > 5000
    none = st.cli("history", "--store", st.url, "--job-id", "never#ran")
    assert none.returncode == 0 and none.stdout.strip() == "job never#ran: no runs recorded"
