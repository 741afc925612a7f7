"""Chirp telemetry sets an attribute only when its value changes (each set is a user-log event)."""

import os

from persistjob.chirp import Chirp


def test_only_changed_values_are_set(tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "condor_chirp"  # stands in for HTCondor's condor_chirp: records its arguments
    fake.write_text("#!/bin/sh\necho \"$@\" >> %s\n" % calls)
    fake.chmod(0o755)
    ad = tmp_path / ".job.ad"
    ad.write_text('GlobalJobId = "h#1.0#1"\nPersistStore = "s3://b/p"\nPersistName = "n"\nPersistGeneration = 4\n')
    (tmp_path / ".chirp.config").write_text("127.0.0.1 1 x\n")
    env = {"_CONDOR_JOB_AD": str(ad), "_CONDOR_SCRATCH_DIR": str(tmp_path), "PATH": str(tmp_path)}
    chirp = Chirp(env)
    chirp._client = None  # use the binary even where the htchirp module is installed
    chirp._binary = str(fake)
    chirp.enabled = True
    chirp({"PersistStore": "s3://b/p", "PersistName": "n", "PersistGeneration": 4, "PersistRuns": 2})
    chirp({"PersistGeneration": 5, "PersistLastCommit": 100})
    chirp({"PersistGeneration": 5, "PersistRuns": 2})  # nothing new
    assert calls.read_text().splitlines() == ["set_job_attr PersistRuns 2", "set_job_attr PersistGeneration 5",
                                              "set_job_attr PersistLastCommit 100"]
    assert os.path.exists(str(ad))
