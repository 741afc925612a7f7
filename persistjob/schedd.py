"""The one place that talks to a schedd (``htcondor2`` only), and HTCondor's job-status names."""

import re
from typing import Any, Dict, List, Optional, Sequence

from . import constants as C
from . import contract as X
from .errors import ConfigError, PersistJobError

ADS_PROJECTION = [
    "ClusterId", "ProcId", "GlobalJobId", "JobStatus", "NumJobStarts", "HoldReason", "HoldReasonCode",
    "HoldReasonSubCode", "EnteredCurrentStatus", "QDate", "NumHolds", C.ATTR_NAME, C.ATTR_STORE, C.ATTR_INTERVAL,
    C.ATTR_GENERATION, C.ATTR_LAST_COMMIT, C.ATTR_BYTES, C.ATTR_RUNS, C.ATTR_LAST_ERROR,
]
JOB_STATUS: Dict[Any, str] = {1: "Idle", 2: "Running", 3: "Removed", 4: "Completed", 5: "Held", 6: "Transferring", 7: "Suspended"}


class SchedulerError(PersistJobError):
    """the schedd could not be reached or refused the request"""

    exit_code = X.EXIT_TEMPFAIL


class SchedulerAuthError(ConfigError):
    """the schedd refused our credentials (IDTOKENS, SEC_TOKEN_DIRECTORY, ...)"""


def _schedd_error(what: str, exc: Exception) -> PersistJobError:
    text = " ".join(str(exc).split())
    if "AUTHENTICATE" in text or "PERMISSION DENIED" in text.upper():
        return SchedulerAuthError("%s: the schedd refused our credentials (check SEC_TOKEN_DIRECTORY and the token's "
                                  "identity): %s" % (what, text))
    return SchedulerError("%s: %s" % (what, text))


def _bindings() -> Any:
    try:
        import htcondor2
    except ImportError:
        raise ConfigError("this needs the HTCondor Python bindings (htcondor2): pip install 'persistjob[htcondor]' "
                          "or the Debian condor package") from None
    return htcondor2


class Scheduler:
    """All schedd calls, behind one small class (htcondor2 only)."""

    def __init__(self, schedd: Optional[str] = None, pool: Optional[str] = None) -> None:
        htcondor2 = _bindings()
        self.h = htcondor2
        #: A schedd named by --schedd/--pool may not see this machine's files: input files are spooled to it.
        self.remote = bool(schedd or pool)
        try:
            if schedd or pool:
                coll = htcondor2.Collector(pool) if pool else htcondor2.Collector()
                if schedd:
                    ad = coll.locate(htcondor2.DaemonType.Schedd, schedd)
                else:
                    ad = coll.locate(htcondor2.DaemonType.Schedd)
                self.schedd = htcondor2.Schedd(ad)
            else:
                self.schedd = htcondor2.Schedd()
        except Exception as exc:
            raise _schedd_error("cannot reach the schedd%s" % (" " + schedd if schedd else ""), exc) from None

    def submit(self, description: Dict[str, str], count: int) -> int:
        """Queue ``count`` jobs; to a remote schedd the input files (bundle, credentials, payload) are
        spooled with them, so that nothing needs to stay on this machine."""
        try:
            result = self.schedd.submit(self.h.Submit(description), count=count, spool=self.remote)
            if self.remote:
                self.schedd.spool(result)
        except Exception as exc:
            raise _schedd_error("submit failed", exc) from None
        return int(result.cluster())

    def query(self, constraint: str, projection: Sequence[str] = ADS_PROJECTION) -> List[Dict[str, Any]]:
        try:
            ads = self.schedd.query(constraint=constraint, projection=list(projection))
        except Exception as exc:
            raise _schedd_error("query failed", exc) from None
        return [{k: ad.eval(k) if k in ad else None for k in projection} for ad in ads]

    def persistent_jobs(self, constraint: Optional[str] = None,
                        projection: Sequence[str] = ADS_PROJECTION) -> List[Dict[str, Any]]:
        """The persistent jobs (PersistJob is true), those matching ``constraint`` if given."""
        c = "(%s =?= true)" % C.ATTR_JOB
        if constraint:
            c += " && (%s)" % constraint
        return self.query(c, projection)

    def remove_jobs(self, ads: Sequence[Dict[str, Any]]) -> int:
        return self.remove(_ids(ads)) if ads else 0

    def still_queued(self, ads: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        return self.query(_ids(ads), ["ClusterId"]) if ads else []

    def remove(self, constraint: str) -> int:
        try:
            result = self.schedd.act(self.h.JobAction.Remove, constraint)
        except Exception as exc:
            raise _schedd_error("remove failed", exc) from None
        try:
            return int(result["TotalSuccess"])
        except (KeyError, TypeError, ValueError):
            return 0


def _ids(ads: Sequence[Dict[str, Any]]) -> str:
    return " || ".join("(ClusterId == %s && ProcId == %s)" % (ad["ClusterId"], ad["ProcId"]) for ad in ads)


def jobspec_constraint(spec: str) -> str:
    """'12' -> cluster 12, '12.3' -> one job, else a ClassAd constraint."""
    if re.match(r"^\d+$", spec):
        return "ClusterId == %s" % spec
    m = re.match(r"^(\d+)\.(\d+)$", spec)
    if m:
        return "ClusterId == %s && ProcId == %s" % m.groups()
    return spec
