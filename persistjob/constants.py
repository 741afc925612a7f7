"""Constants shared by the submit side and the worker side.

One small module, imported by both, so that the exit-code contract and the
names of job-ad attributes are never duplicated by hand.

Exit-code contract of ``persistjob run`` (scheduler policies are built on it):

====  ===================================================================
code  meaning
====  ===================================================================
0     the payload finished (and its final state was committed)
1     the payload failed; the last good generation is kept; run me again
75    try later: another instance owns the job (fenced), or storage was
      unreachable after bounded retries (never a fresh start then)
78    configuration or bad input; needs a human (HTCondor: hold)
79    crash loop: K consecutive runs failed without a new commit
85    checkpointed, run me again (lifetime over, or evicted)
====  ===================================================================
"""

EXIT_DONE = 0
EXIT_PAYLOAD_FAILED = 1
EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78
EXIT_CRASHLOOP = 79
EXIT_CHECKPOINTED = 85

EXIT_MEANINGS = {
    EXIT_DONE: "done",
    EXIT_PAYLOAD_FAILED: "payload failed",
    EXIT_TEMPFAIL: "try later",
    EXIT_CONFIG: "configuration error",
    EXIT_CRASHLOOP: "crash loop",
    EXIT_CHECKPOINTED: "checkpointed",
}

# Environment given to the payload.
ENV_JOB_ID = "PERSISTJOB_JOB_ID"
ENV_CHECKPOINT_DIR = "PERSISTJOB_CHECKPOINT_DIR"
ENV_RUN = "PERSISTJOB_RUN"
ENV_GENERATION = "PERSISTJOB_GENERATION"
ENV_MARKER = "PERSISTJOB_CHECKPOINT_MARKER"

# Job-ad attributes (set through chirp by the wrapper, read by `status`).
ATTR_JOB = "PersistJob"
ATTR_NAME = "PersistName"
ATTR_GENERATION = "PersistGeneration"
ATTR_LAST_COMMIT = "PersistLastCommit"
ATTR_BYTES = "PersistBytes"
ATTR_RUNS = "PersistRuns"
ATTR_LAST_ERROR = "PersistLastError"
ATTR_STORE = "PersistStore"
ATTR_INTERVAL = "PersistInterval"

# Defaults of the wrapper.
DEFAULT_INTERVAL = 3600.0
DEFAULT_LIFETIME = 12 * 3600.0
DEFAULT_VACATE_GRACE = 60.0
DEFAULT_KEEP = 3
DEFAULT_CRASH_LIMIT = 3
DEFAULT_STORAGE_TIMEOUT = 300.0
DEFAULT_CHUNK_SIZE = 1 << 20

# Name of the marker file in signal mode, inside the checkpoint directory
# (never part of a snapshot).
MARKER_NAME = ".persistjob-ready"
