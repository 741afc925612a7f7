"""Job ads for ``condor_q``/``condor_status``, built from the job table's rows."""

import json
import socket
import sqlite3
from typing import Any, Dict, Iterable, Optional


def environment_string(env: Dict[str, str]) -> str:
    """An environment in HTCondor's new syntax, as condor_q shows it: 'A=1 B=2'."""
    parts = []
    for k, v in sorted(env.items()):
        if any(c in v for c in " '\t"):
            v = "'" + v.replace("'", "''") + "'"
        parts.append("%s=%s" % (k, v))
    return " ".join(parts)


def job_ad(row: sqlite3.Row, schedd_host: Optional[str] = None) -> Dict[str, Any]:
    """The ClassAd attributes of one job, as Python values (custom ones as expression strings)."""
    args = json.loads(row["args"])
    env = json.loads(row["env"])
    host = schedd_host or socket.gethostname()
    ad: Dict[str, Any] = {
        "ClusterId": row["cluster"],
        "ProcId": row["proc"],
        "JobStatus": row["status"],
        "Owner": row["owner"],
        "User": "%s@%s" % (row["owner"], host),
        "Cmd": row["cmd"],
        "Iwd": row["iwd"],
        "QDate": row["qdate"],
        "EnteredCurrentStatus": row["entered"],
        "NumJobStarts": row["starts"],
        "JobUniverse": 5,
        "GlobalJobId": "%s#%d.%d#%d" % (host, row["cluster"], row["proc"], row["qdate"]),
    }
    if args:
        ad["Args"] = " ".join(args)
    ad["Environment"] = environment_string(env)  # HTCondor always defines it ("" when empty)
    ad["In"] = "/dev/null"
    for key, attr in (("output", "Out"), ("error", "Err")):
        ad[attr] = row[key] or "/dev/null"  # HTCondor's value for a job without output/error
    if row["log"]:
        ad["UserLog"] = row["log"]
    if row["exit_code"] is not None:
        ad["ExitCode"] = row["exit_code"]
    if row["hold_reason"]:
        ad["HoldReason"] = row["hold_reason"]
        ad["HoldReasonCode"] = 3
        ad["HoldReasonSubCode"] = row["hold_subcode"] or 0
        ad["NumHolds"] = row["holds"]
    if row["job_id"]:
        ad["PersistJobId"] = row["job_id"]
        ad["PersistJob"] = True
    ad["_custom"] = json.loads(row["attrs"])
    return ad


def iter_ads(rows: Iterable[sqlite3.Row]) -> Iterable[Dict[str, Any]]:
    host = socket.gethostname()
    for r in rows:
        yield job_ad(r, host)
