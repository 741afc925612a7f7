"""One error hierarchy; every user-facing error carries its exit code.

The CLI's ``main()`` maps these to exit codes and prints a single line; no
traceback is shown for an expected failure.  Storage errors have a
*retryable* branch (:class:`StorageUnavailable`), and only that branch is
retried.
"""

from . import contract as X


def reason_from_stderr(lines: "list", default: str = "") -> str:
    """The wrapper's one-line reason from the tail of its stderr (for hold reasons).

    ``persistjob: error: REASON`` (a failure) or ``... exit N (meaning): REASON`` (an orderly end).
    """
    for line in reversed(lines):
        line = line.strip()
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
        if " exit " in line and "): " in line:
            return line.split("): ", 1)[1].strip()
    return lines[-1].strip() if lines else default


class PersistJobError(Exception):
    """persistjob failed."""

    exit_code = X.EXIT_CONFIG

    def __init__(self, message: str = "") -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(PersistJobError):
    """bad configuration or input"""

    exit_code = X.EXIT_CONFIG


class TryLater(PersistJobError):
    """try later"""

    exit_code = X.EXIT_TEMPFAIL


class Fenced(TryLater):
    """another instance owns this job"""


# ----------------------------------------------------------------- storage


class StorageError(PersistJobError):
    """storage failed"""

    exit_code = X.EXIT_TEMPFAIL


class StorageUnavailable(StorageError):
    """storage unreachable or busy (retryable)"""


class StorageConfigError(StorageError):
    """storage refused the request: credentials, bucket or permissions"""

    exit_code = X.EXIT_CONFIG


class ObjectNotFound(StorageError):
    """no such object"""


class ObjectExists(StorageError):
    """object already exists (create-if-absent lost)"""


class InvalidURL(ConfigError):
    """malformed store URL"""


# ---------------------------------------------------------- checkpoint data


class IntegrityError(PersistJobError):
    """stored data failed verification"""

    exit_code = X.EXIT_TEMPFAIL


class UnsafeManifest(ConfigError):
    """a manifest names a path outside the checkpoint directory"""


class StoreCannotFence(ConfigError):
    """the store does not refuse a second create of the same key"""


class JobRemoved(ConfigError):
    """the job was removed"""


class NoIntactGeneration(ConfigError):
    """no committed generation could be restored intact"""

    #: The damaged generations, newest first (set by the repository).
    fallbacks: "list" = []
