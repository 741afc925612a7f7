"""Names shared by the submit side and the worker side, and the wrapper's defaults.

One small module, imported by both, so that job-ad attribute names, the payload's environment and
the defaults are never duplicated by hand.  The exit codes and what executors do with them live in
``contract.py``; the run options in ``options.py``.
"""

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

# Store URL schemes: grid storage through gfal2 (root:// data through the XRootD client), then ours.
GRID_SCHEMES = ("root", "roots", "xroot", "davs", "dav", "https", "http", "srm")
STORE_SCHEMES = ("file", "s3") + GRID_SCHEMES
STORE_SCHEMES_SHOWN = ", ".join(s + "://" for s in STORE_SCHEMES)  # as error messages list them

# Compression of stored chunks and manifests (persistjob.codec): zlib is in every Python.
CODECS = ("zlib", "zstd")
DEFAULT_CODEC = "zlib"

# Name of the marker file in signal mode, inside the checkpoint directory
# (never part of a snapshot).
MARKER_NAME = ".persistjob-ready"
