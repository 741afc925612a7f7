"""A real HTCondor client from PyPI, unchanged, against the condor_* shims of a Work Queue site.

dask-jobqueue's ``HTCondorCluster`` writes a submit description full of HTCondor's macros
(``MY.JobId = "$(ClusterId).$(ProcId)"``, ``Output = $(LogDirectory)/worker-$F(MY.JobId).out``,
``Stream_Output = True``), reads the cluster id from condor_submit's output and removes each job with
``condor_rm CLUSTER.PROC``.  Here it scales up to two dask workers run by real work_queue_workers,
computes, scales down and closes.
"""

import os
import subprocess
import sys

import pytest

from tests.conftest import wait_for
from tests.integration.test_workqueue import Site

pytestmark = pytest.mark.workqueue


def _listeners(pid):
    """The addresses that a process listens on (ss -tlnp)."""
    out = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True).stdout
    return [line.split()[3] for line in out.splitlines() if "pid=%d," % pid in line]


def test_dask_jobqueue_htcondor_cluster_runs_unchanged_against_the_shims(tmp_path, monkeypatch):
    import dask_jobqueue  # the test extra installs it
    from distributed import Client

    site = Site(tmp_path).start()
    logs = tmp_path / "logs"
    try:
        for k in ("AWQ_WORKDIR", "PATH"):
            monkeypatch.setenv(k, site.env[k])  # dask-jobqueue runs condor_submit/condor_rm from this process's PATH
        cluster = dask_jobqueue.HTCondorCluster(
            cores=1, memory="1 GiB", disk="1 GiB", processes=1, log_directory=str(logs), python=sys.executable,
            nanny=False, worker_extra_args=["--host", "127.0.0.1"],  # every listener of the test on 127.0.0.1
            scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})
        try:
            assert "Output = $(LogDirectory)/worker-$F(MY.JobId).out" in cluster.job_script()
            cluster.scale(2)
            for _ in range(2):
                site.worker(timeout=300)
            client = Client(cluster)
            client.wait_for_workers(2, timeout=240)
            assert client.submit(sum, [1, 2, 3]).result(timeout=120) == 6
            assert sum(client.gather(client.map(lambda x: x * x, range(10)))) == 285
            ids = sorted(w.job_id for w in cluster.workers.values())
            assert ids == ["1.0", "2.0"]  # parsed from "1 job(s) submitted to cluster 1."
            # (the manager sees a task start within a second or so; the dask worker may register first)
            expected = "1.0 2 htcondor--1.0-- %s/worker-1.0.out\n2.0 2 htcondor--2.0-- %s/worker-2.0.out\n" % (logs, logs)
            wait_for(lambda: site.sh("condor_q -af:j JobStatus DaskWorkerName Out").stdout == expected, 60,
                     "both jobs running, as condor_q shows them")
            # Stream_Output = True: the dask workers' logs are in their files while they run
            wait_for(lambda: all("Registered to" in (logs / ("worker-%s.err" % j)).read_text()
                                 for j in ids if (logs / ("worker-%s.err" % j)).exists())
                     and all((logs / ("worker-%s.err" % j)).exists() for j in ids), 60, "the streamed worker logs")
            assert all(a.startswith("127.0.0.1:") for a in _listeners(os.getpid())), _listeners(os.getpid())
            cluster.scale(0)  # condor_rm 1.0, condor_rm 2.0
            wait_for(lambda: site.sh("condor_q -af ClusterId").stdout == "", 120, "the jobs to leave the queue")
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 0, 120, "the dask workers to go")
            client.close()
        finally:
            cluster.close()
        for j in ("1.0", "2.0"):
            assert (logs / ("worker-%s.out" % j)).exists()
        assert "000 (001.000.000)" in (logs / "worker-1.log").read_text()
    finally:
        site.stop_workers()
        site.stop()
