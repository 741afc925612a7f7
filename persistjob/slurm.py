"""Persistent jobs on Slurm (submit side): the batch script, ``sbatch``, the queue as persistjob sees
it, ``scancel``.  No database, no cron: Slurm keeps the job and its ID across requeues.

* Identity: ``slurm#<ClusterName>#<SLURM_JOB_ID>#<nonce>``.  The job ID survives requeues, but job
  IDs start again at 1 when a controller's state is wiped and ``SubmitTime`` changes at every requeue,
  so a random nonce fixed at submit time (in the batch script and the job's comment) makes the store
  key unique for the job's whole life.
* Re-runs: the wrapper's exit code goes through the contract table (``contract.py``) in the batch
  script.  "Run again" is ``exit 85`` where the site set ``RequeueExit=85`` (detected at run time),
  else the job requeues itself (``scontrol requeue``) before it exits; both keep the job ID and raise
  ``SLURM_RESTART_COUNT``.  75 requeues with a "not before" time ``retry_delay`` ahead (kept in a
  file: Slurm lets no one change a running job's begin time, and kills a requeued job's processes at
  once, so a run that starts too early requeues again without running); 79 likewise with the release
  back-off, and after ``--release-limit`` releases it is held; 78 is held at once (``scontrol
  requeuehold``).  The wrapper's reason is in the job's comment (``err=``).
* Time limit: ``--time`` covers the lifetime, the final checkpoint and a margin; ``--signal=B:USR1@N``
  (USR1, not TERM: a job that requeues itself on TERM would survive ``scancel``) asks for a final
  checkpoint and a requeue before Slurm ends the job as TIMEOUT, which it would never requeue.
  TERM (``scancel``, preemption) asks for a final checkpoint and ends the run without a requeue
  (preemption with requeue is Slurm's own).
* Telemetry: the wrapper writes generation, last commit and last error into the job's ``Comment``
  (``telemetry.SlurmComment``), which ``squeue``/``scontrol show job`` show.
* Secrets: ``--export=NONE`` (sbatch would export the submitter's whole environment); the variables
  named by ``--getenv`` go into the script as values, after the secret-name check; S3 credentials
  are a 0600 file named by ``AWS_SHARED_CREDENTIALS_FILE``.
* The bundle and the credentials file are read from where ``submit`` left them: the submit host's
  filesystem must be shared with the nodes (docs/slurm.md).
"""

import json
import os
import re
import secrets
import shlex
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import constants as C
from . import contract as X
from .errors import ConfigError, PersistJobError
from .options import run_argv
from .submit import SHOWN_RUN_OPTIONS
from .telemetry import COMMENT_TAG, ENV_SLURM_COMMENT, comment, parse_comment

#: seconds between the pre-limit warning and the time limit, beyond the vacate grace (Slurm sends it
#: up to 60 s earlier still)
SIGNAL_MARGIN = 30
#: --time beyond lifetime + grace: Slurm may send the warning up to 60 s early and counts minutes
TIME_MARGIN = 120


class SlurmError(PersistJobError):
    exit_code = X.EXIT_TEMPFAIL


def job_id(cluster: str, slurm_job_id: str, nonce: str) -> str:
    return "slurm#%s#%s#%s" % (cluster, slurm_job_id, nonce)


def _minutes(seconds: float) -> int:
    """Slurm's --time counts whole minutes: round up."""
    return int(-(-seconds // 60))


def time_limit_minutes(lifetime: float, grace: float) -> int:
    return _minutes(lifetime + grace + TIME_MARGIN)


def _sh(value: Any) -> str:
    return shlex.quote(str(value))


def _dispatch(o: Any) -> str:
    """The shell ``case`` that follows the contract table for the wrapper's exit code."""
    lines = []
    for action, body in ((X.COMPLETE, "done_run"), (X.RERUN, "rerun"), (X.RERUN_LATER, "rerun_later"),
                         (X.HOLD, "hold"), (X.HOLD_RELEASE, "hold_release")):
        codes = X.codes(action)
        if codes:
            lines.append("    %s) %s ;;" % ("|".join(str(c) for c in codes), body))
    lines.append("    *) rerun_later ;;   # any other code: try later")
    return "\n".join(lines)


def batch_script(o: Any, nonce: str, *, bundle: str, python: str = "python3", exports: Sequence[Tuple[str, str]] = (),
                 partition: Optional[str] = None, account: Optional[str] = None,
                 time_limit: Optional[float] = None) -> str:
    """The batch script of ``persistjob submit --scheduler slurm`` (a pure function of its arguments;
    ``--dry-run`` prints it; templates/persistent-job.slurm is one, explained)."""
    lifetime = float(o.get("lifetime"))
    grace = float(o.get("vacate_grace"))
    out = os.path.abspath(o.output_dir)
    array = "_%a" if o.count > 1 else ""
    sbatch = ["--job-name=%s" % o.name,
              "--output=%s/%s.%%A%s.out" % (out, o.name, array),
              "--error=%s/%s.%%A%s.err" % (out, o.name, array),
              "--open-mode=append",
              "--requeue",
              "--time=%d" % (time_limit_minutes(lifetime, grace) if time_limit is None else _minutes(time_limit)),
              "--signal=B:USR1@%d" % int(grace + SIGNAL_MARGIN),
              "--export=NONE",
              '--comment="%s"' % comment({"id": nonce, "name": o.name, "store": o.store})]
    if o.count > 1:
        sbatch.append("--array=0-%d" % (o.count - 1))
    if partition:
        sbatch.append("--partition=%s" % partition)
    if account:
        sbatch.append("--account=%s" % account)
    payload = list(o.payload)
    if "/" in payload[0] and not os.path.isabs(payload[0]):
        payload[0] = os.path.abspath(payload[0])  # the run starts in its own scratch directory
    args = ["run", *run_argv(o.run, always=SHOWN_RUN_OPTIONS), "--", *payload]
    env = [(ENV_SLURM_COMMENT, comment({"id": nonce, "name": o.name, "store": o.store})[len(COMMENT_TAG) + 1:]),
           *exports]
    retry, release = int(o.retry_base), int(o.release_base)
    cap = int(X.DEFAULT_RETRY_CAP)
    return "\n".join([
        "#!/bin/sh",
        *("#SBATCH " + s for s in sbatch),
        "# A persistent job (persistjob submit --scheduler slurm): it runs for --lifetime, checkpoints to the",
        "# store, and requeues itself with the same job ID; templates/persistent-job.slurm explains each part.",
        'export PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}"',
        # the identity: the job ID survives requeues; the nonce survives a controller whose IDs restart at 1
        'export %s="slurm#${SLURM_CLUSTER_NAME}#${SLURM_JOB_ID}#%s"' % (C.ENV_JOB_ID, nonce),
        *("export %s=%s" % (k, _sh(v)) for k, v in env),
        "state=%s/.persistjob-slurm" % _sh(out),
        'mkdir -p "$state"; later="$state/$SLURM_JOB_ID.later"; holds="$state/$SLURM_JOB_ID.holds"',
        'notbefore="$state/$SLURM_JOB_ID.notbefore"',
        "delay() {  # contract.retry_delay: BASE * 2^(N-1), at most %d s" % cap,
        '    n=$2; [ "$n" -gt %d ] && n=%d; d=$(( $1 << (n - 1) )); [ "$d" -gt %d ] && d=%d; echo "$d"' % (
            X.DOUBLINGS_MAX + 1, X.DOUBLINGS_MAX + 1, cap, cap),
        "}",
        "count() { n=$(( $(cat \"$1\" 2>/dev/null || echo 0) + 1 )); echo \"$n\" > \"$1\"; echo \"$n\"; }",
        "rerun() {  # exit 85 where the site requeues on it (RequeueExit), else requeue ourselves",
        '    rm -f "$later" "$notbefore"',
        "    if scontrol show config 2>/dev/null | grep -Eq '^RequeueExit +=.*(^|[ =,])85([,]|$)'; then",
        '        echo "persistjob-slurm: run again: exit 85 (RequeueExit)" >&2; exit 85',
        "    fi",
        '    echo "persistjob-slurm: run again: scontrol requeue" >&2; scontrol requeue "$SLURM_JOB_ID"; exit 0',
        "}",
        "# A delayed re-run: Slurm lets no one change a running job's begin time, and a requeued job's processes",
        "# are killed at once, so the time is kept in a file and a run that starts before it requeues at once.",
        "later_by() {",
        '    echo $(( $(date +%s) + $1 )) > "$notbefore"',
        '    echo "persistjob-slurm: run again in $1 s or later" >&2; scontrol requeue "$SLURM_JOB_ID"; exit 0',
        "}",
        'rerun_later() { n=$(count "$later"); later_by "$(delay %d "$n")"; }' % retry,
        'hold() { rm -f "$later" "$notbefore"; scontrol requeuehold "$SLURM_JOB_ID"; exit 0; }',
        "hold_release() {  # crash loop: run again after a growing delay, held after %d releases" % o.release_limit,
        '    rm -f "$later"; n=$(count "$holds"); [ "$n" -gt %d ] && hold' % o.release_limit,
        '    later_by "$(delay %d "$n")"' % release,
        "}",
        'done_run() { rm -f "$later" "$holds" "$notbefore"; exit 0; }' if not o.forever else
        "done_run() { rerun; }   # a forever job runs again after a clean end",
        'if [ "$(date +%s)" -lt "$(cat "$notbefore" 2>/dev/null || echo 0)" ]; then',
        '    echo "persistjob-slurm: too early (not before $(cat "$notbefore")): requeued without running" >&2',
        '    scontrol requeue "$SLURM_JOB_ID"; exit 0',
        "fi",
        "# each run in its own scratch directory on the node (jobs start in the shared submit directory)",
        'work=$(mktemp -d "${TMPDIR:-/tmp}/persistjob-slurm-$SLURM_JOB_ID.XXXXXX") && cd "$work" || rerun_later',
        "# ...removed however the run ends; a second SIGTERM of scancel must not kill the rm half way (it left",
        "# an empty directory behind): the trap ignores TERM first, and rm inherits that",
        "trap 'trap \"\" TERM USR1; cd /; rm -rf \"$work\"' EXIT",
        "stopping= pid=",
        "# USR1: the time limit is near: final checkpoint, then requeue.  TERM: scancel or preemption: final",
        "# checkpoint, then end (Slurm requeues a preempted job itself).",
        "trap 'interrupted=1; ask=1; [ -n \"$pid\" ] && kill -TERM $pid 2>/dev/null' USR1",
        "trap 'interrupted=1; ask=1; stopping=1; [ -n \"$pid\" ] && kill -TERM $pid 2>/dev/null' TERM",
        'echo "persistjob-slurm: run started $(date +%s)" >&2',
        "%s %s %s &" % (_sh(python), _sh(bundle), " ".join(_sh(a) for a in args)),
        "pid=$!",
        '[ -n "$ask" ] && kill -TERM "$pid"   # a signal before the wrapper started',
        "# wait for the wrapper; a trapped signal interrupts wait (the child is not reaped then: wait again)",
        'while :; do interrupted=; wait "$pid"; rc=$?; [ -n "$interrupted" ] && [ "$rc" -gt 128 ] || break; done',
        'echo "persistjob-slurm: run ended $(date +%s), exit $rc" >&2',
        '[ -n "$stopping" ] && exit 0',
        'case "$rc" in',
        _dispatch(o),
        "esac",
        "",
    ])


# ------------------------------------------------------------------ talking to Slurm


def _run(cmd: Sequence[str], what: str, timeout: float = 120, stdin: Optional[str] = None) -> str:
    try:
        r = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ConfigError("%s: %s not found (is this a Slurm submit host?)" % (what, cmd[0])) from None
    except subprocess.TimeoutExpired:
        raise SlurmError("%s: %s did not answer in %.0f s" % (what, cmd[0], timeout)) from None
    if r.returncode != 0:
        err = (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]
        raise SlurmError("%s: %s" % (what, err))
    return r.stdout


def sbatch(script: str) -> str:
    """Submit one batch script; the job ID (``1234``, or ``1234`` of an array)."""
    out = _run(["sbatch", "--parsable"], "sbatch", stdin=script).strip()
    return out.split(";")[0]


def cluster_name() -> str:
    for line in _run(["scontrol", "show", "config"], "scontrol show config").splitlines():
        k, _, v = line.partition("=")
        if k.strip() == "ClusterName":
            return v.strip()
    return ""


_STATUS = {"PENDING": 1, "CONFIGURING": 2, "RUNNING": 2, "COMPLETING": 2, "SUSPENDED": 7, "STOPPED": 7,
           "REQUEUED": 1, "REQUEUE_HOLD": 5, "REQUEUE_FED": 1, "RESIZING": 2, "CANCELLED": 3, "COMPLETED": 4}


_ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "REQUEUED", "REQUEUE_HOLD",
           "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT"}


class SlurmQueue:
    """Slurm's queue in the shape ``status`` and ``rm`` read HTCondor's: one ad per persistent job."""

    def __init__(self) -> None:
        self._cluster: Optional[str] = None
        self._json: Optional[bool] = None

    def persistent_jobs(self, constraint: Optional[str] = None, projection: Sequence[str] = ()) -> List[Dict[str, Any]]:
        """The jobs persistjob submitted (their comment says so) that Slurm still keeps active, those
        matching ``constraint`` if given: a ClassAd expression over the same attributes as on
        HTCondor, or Slurm job IDs.  One squeue for all jobs (``--json`` where this Slurm has it)."""
        ads = []
        for row in self._rows():
            fields = parse_comment(row["comment"])
            if fields is None or "id" not in fields or row["state"] not in _ACTIVE:
                continue
            ads.append(self._ad(row, fields))
        return [a for a in ads if _matches(constraint, a)]

    def _rows(self) -> List[Dict[str, Any]]:
        r = subprocess.run(["squeue", "--json"], capture_output=True, text=True, timeout=120) \
            if self._json is not False else None
        if r is not None and r.returncode == 0:
            try:
                return [_json_row(j) for j in json.loads(r.stdout)["jobs"]]
            except (ValueError, KeyError, TypeError):
                pass
        self._json = False  # an older Slurm, or one without its data_parser plugin: the text format
        rows = []
        for line in _run(["squeue", "-h", "-a", "-t", "all", "-o", "%i|%A|%a|%T|%r|%S|%V|%j|%k"], "squeue").splitlines():
            parts = line.split("|", 8)
            if len(parts) == 9:
                jid, array_job, task, state, reason, start, submit, name, text = parts
                rows.append({"id": jid, "array_job": array_job, "task": task, "state": state, "reason": reason,
                             "start": _epoch(start), "submit": _epoch(submit), "name": name, "comment": text,
                             "restarts": None, "cluster": None})
        return rows

    def _ad(self, row: Dict[str, Any], f: Dict[str, str]) -> Dict[str, Any]:
        cluster = row["cluster"]
        if not cluster:
            if self._cluster is None:
                self._cluster = cluster_name()
            cluster = self._cluster
        state, reason, jid = row["state"], row["reason"], str(row["id"])
        held = state == "PENDING" and ("held" in reason.lower() or reason in ("JobHeldUser", "JobHeldAdmin"))
        task = row["task"]
        ad: Dict[str, Any] = {
            "ClusterId": jid, "ProcId": 0,
            "JobLabel": jid if task in (None, "", "N/A", "(null)") else "%s_%s" % (row["array_job"], task),
            "JobStatus": 5 if held else _STATUS.get(state, 1), "SlurmState": state, "SlurmReason": reason,
            "GlobalJobId": job_id(cluster, jid, f["id"]), C.ATTR_JOB: True,
            C.ATTR_NAME: f.get("name") or row["name"], C.ATTR_STORE: f.get("store"),
            "EnteredCurrentStatus": row["start"] if state == "RUNNING" else row["submit"],
        }
        if row["restarts"] is not None:
            ad["NumJobStarts"] = row["restarts"] + (1 if state == "RUNNING" else 0)
        if held:
            ad["HoldReason"] = f.get("err") or reason
        for key, attr in (("gen", C.ATTR_GENERATION), ("commit", C.ATTR_LAST_COMMIT), ("runs", C.ATTR_RUNS)):
            if f.get(key, "").isdigit():
                ad[attr] = int(f[key])
        if f.get("err"):
            ad[C.ATTR_LAST_ERROR] = f["err"]
        return ad

    def remove_jobs(self, ads: Sequence[Dict[str, Any]]) -> int:
        """scancel: each running job gets TERM, takes its final checkpoint and ends without a requeue."""
        ids = [str(a["ClusterId"]) for a in ads]
        if ids:
            _run(["scancel", *ids], "scancel")
        return len(ids)

    def still_queued(self, ads: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        ids = {str(a["ClusterId"]) for a in ads}
        return [a for a in self.persistent_jobs() if str(a["ClusterId"]) in ids and a["SlurmState"] in _ACTIVE]


def _number(v: Any) -> Any:
    """squeue --json numbers: plain (Slurm 22.05) or {"set": .., "number": ..} (23.02 and later)."""
    if isinstance(v, dict):
        return v.get("number") if v.get("set", True) else None
    return v


def _json_row(j: Dict[str, Any]) -> Dict[str, Any]:
    state = j.get("job_state")
    if isinstance(state, list):
        state = state[0] if state else ""
    task = _number(j.get("array_task_id"))
    return {"id": _number(j["job_id"]), "array_job": _number(j.get("array_job_id")), "task": task,
            "state": str(state), "reason": str(j.get("state_reason") or ""), "start": _number(j.get("start_time")),
            "submit": _number(j.get("submit_time")), "name": j.get("name") or "", "comment": j.get("comment") or "",
            "restarts": _number(j.get("restart_cnt")), "cluster": j.get("cluster") or None}


def _epoch(text: str) -> Optional[float]:
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _matches(constraint: Optional[str], ad: Dict[str, Any]) -> bool:
    """A ClassAd constraint over the synthetic ad (needs classad2), or a list of Slurm job IDs."""
    if not constraint:
        return True
    if re.match(r"^[\d_ ,]+$", constraint):
        return str(ad["ClusterId"]) in re.split(r"[ ,]+", constraint) or ad["JobLabel"] in re.split(r"[ ,]+", constraint)
    try:
        import classad2
    except ImportError:
        raise ConfigError("--constraint on Slurm needs the ClassAd library (pip install htcondor), "
                          "or give Slurm job IDs") from None
    c = classad2.ClassAd()
    for k, v in ad.items():
        if v is not None:
            c[k] = v
    return classad2.ExprTree(constraint).eval(c) is True


def submit(o: Any, *, bundle: str, exports: Sequence[Tuple[str, str]], partition: Optional[str],
           account: Optional[str], time_limit: Optional[float] = None, dry_run: bool = False) -> Tuple[str, str]:
    """(the batch script, the job ID sbatch gave it, or "" for a dry run)."""
    nonce = secrets.token_hex(6)
    script = batch_script(o, nonce, bundle=os.path.abspath(bundle), exports=exports, partition=partition,
                          account=account, time_limit=time_limit)
    if dry_run:
        return script, ""
    os.makedirs(o.output_dir, exist_ok=True)
    return script, sbatch(script)
