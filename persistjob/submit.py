"""Submit side for HTCondor: description, policy, status and removal.

``build_description()`` is the one pure function that turns options into a
submit description (a plain dict, tested without a schedd); ``Scheduler`` is
the only place that talks to a schedd (``htcondor2``).  The policy is built
on the wrapper's exit-code contract (see ``constants.py``):

* forever mode: ``on_exit_remove = false`` (the job runs again, forever);
  until-done mode: removed when the wrapper exits 0;
* 78 and 79 put the job on hold with the wrapper's one-line reason
  (``PersistLastError``, set through chirp just before it exits);
* a crash-loop hold (79) is released with exponential backoff up to a limit.
"""

import re
import shlex
import shutil
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from . import constants as C
from .errors import ConfigError, PersistJobError

ADS_PROJECTION = [
    "ClusterId", "ProcId", "GlobalJobId", "JobStatus", "NumJobStarts", "HoldReason", "HoldReasonCode",
    "HoldReasonSubCode", "EnteredCurrentStatus", "QDate", "NumHolds", C.ATTR_NAME, C.ATTR_STORE, C.ATTR_INTERVAL,
    C.ATTR_GENERATION, C.ATTR_LAST_COMMIT, C.ATTR_BYTES, C.ATTR_RUNS, C.ATTR_LAST_ERROR,
]
JOB_STATUS: Dict[Any, str] = {1: "Idle", 2: "Running", 3: "Removed", 4: "Completed", 5: "Held", 6: "Transferring", 7: "Suspended"}


class SchedulerError(PersistJobError):
    """the schedd could not be reached or refused the request"""

    exit_code = C.EXIT_TEMPFAIL


class SchedulerAuthError(ConfigError):
    """the schedd refused our credentials (IDTOKENS, SEC_TOKEN_DIRECTORY, ...)"""


def _schedd_error(what: str, exc: Exception) -> PersistJobError:
    text = " ".join(str(exc).split())
    if "AUTHENTICATE" in text or "PERMISSION DENIED" in text.upper():
        return SchedulerAuthError("%s: the schedd refused our credentials (check SEC_TOKEN_DIRECTORY and the token's "
                                  "identity): %s" % (what, text))
    return SchedulerError("%s: %s" % (what, text))


# ------------------------------------------------------------------ quoting


def condor_quote_args(args: Sequence[str]) -> str:
    """Arguments in HTCondor's new syntax: ``"a 'b c' d"``.

    Inside the double quotes, arguments are separated by spaces; one with
    spaces or quotes is wrapped in single quotes; a literal single quote is
    written twice, a literal double quote twice.
    """
    out = []
    for a in args:
        a = str(a)
        if "\n" in a:
            raise ConfigError("HTCondor arguments cannot contain newlines: %r" % a)
        a = a.replace('"', '""')
        if a == "" or re.search(r"[\s']", a):
            a = "'" + a.replace("'", "''") + "'"
        out.append(a)
    return '"' + " ".join(out) + '"'


def classad_string(text: str) -> str:
    return '"%s"' % str(text).replace("\\", "\\\\").replace('"', '\\"')


# --------------------------------------------------------------------- cron


_CRON_FIELDS = ("cron_minute", "cron_hour", "cron_day_of_month", "cron_month", "cron_day_of_week")
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def parse_cron(spec: str) -> Dict[str, str]:
    """'MIN HOUR DOM MON DOW' -> HTCondor's cron_* submit commands.

    Each field is ``*``, a number, a range ``a-b``, a list ``a,b`` or a step
    ``*/n`` / ``a-b/n``, as HTCondor's cron syntax accepts.
    """
    parts = spec.split()
    if len(parts) != 5:
        raise ConfigError("--cron needs five fields 'MIN HOUR DOM MON DOW', got %r" % spec)
    out = {}
    for name, text, (lo, hi) in zip(_CRON_FIELDS, parts, _CRON_RANGES):
        for item in text.split(","):
            m = re.match(r"^(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?$", item)
            if not m:
                raise ConfigError("--cron: bad %s field %r" % (name[5:], text))
            for num in (m.group(2), m.group(3)):
                if num is not None and not lo <= int(num) <= hi:
                    raise ConfigError("--cron: %s value %s is outside %d-%d" % (name[5:], num, lo, hi))
            if m.group(4) is not None and int(m.group(4)) == 0:
                raise ConfigError("--cron: step 0 in %r" % text)
        out[name] = text
    return out


# -------------------------------------------------------------- description


class SubmitOptions:
    """What ``persistjob submit`` was asked for.  A plain class, not a dataclass: ``dataclasses``
    (and the ``inspect`` it pulls in) cost more start-up time than the whole description builder,
    and ``persistjob submit`` is measured against ``condor_submit``."""

    __slots__ = ("store", "payload", "count", "lifetime", "interval", "mode", "vacate_grace", "forever", "name",
                 "wrapper", "crash_limit", "release_limit", "release_base", "cron", "cron_window", "cron_prep_time",
                 "transfer_input", "output_dir", "getenv", "initialdir", "extra", "run_args")

    def __init__(self, store: str, payload: Sequence[str], count: int = 1, lifetime: str = "12h",
                 interval: str = "1h", mode: str = "freeze", vacate_grace: float = C.DEFAULT_VACATE_GRACE,
                 forever: bool = True, name: str = "persistjob", wrapper: str = "persistjob",
                 crash_limit: int = C.DEFAULT_CRASH_LIMIT, release_limit: int = 5, release_base: int = 60,
                 cron: Optional[str] = None, cron_window: Optional[int] = None, cron_prep_time: Optional[int] = None,
                 transfer_input: Sequence[str] = (), output_dir: str = ".", getenv: Sequence[str] = (),
                 initialdir: Optional[str] = None, extra: Sequence[Tuple[str, str]] = (),
                 run_args: Sequence[str] = ()) -> None:
        if not payload:
            raise ConfigError("no payload given (persistjob submit --store URL ... -- PAYLOAD ARGS...)")
        if count < 1:
            raise ConfigError("--count must be at least 1")
        if mode not in ("freeze", "signal", "exit-code"):
            raise ConfigError("unknown mode %r" % mode)
        if not re.match(r"^[A-Za-z0-9_.-]+$", name):
            raise ConfigError("--name may use letters, digits, '_', '.' and '-' only")
        if cron is not None and not forever:
            raise ConfigError("--cron jobs run on a schedule forever; --until-done does not apply")
        self.store, self.payload, self.count = store, tuple(payload), count
        self.lifetime, self.interval, self.mode, self.vacate_grace = lifetime, interval, mode, vacate_grace
        self.forever, self.name, self.wrapper, self.crash_limit = forever, name, wrapper, crash_limit
        self.release_limit, self.release_base = release_limit, release_base
        self.cron, self.cron_window, self.cron_prep_time = cron, cron_window, cron_prep_time
        self.transfer_input, self.output_dir, self.getenv = tuple(transfer_input), output_dir, tuple(getenv)
        self.initialdir, self.extra, self.run_args = initialdir, tuple(extra), tuple(run_args)

    def __repr__(self) -> str:
        return "SubmitOptions(%s)" % ", ".join("%s=%r" % (k, getattr(self, k)) for k in self.__slots__)


def _is_match_time(value: str) -> bool:
    return "$$(" in str(value)


def _seconds_expr(value: str) -> Optional[int]:
    from .identity import parse_duration

    if _is_match_time(value):
        return None
    return int(parse_duration(value))


def build_description(o: SubmitOptions) -> Dict[str, str]:
    """The submit description of a persistent job, as a plain dict.

    Store URL, lifetime, interval and payload may be match-time values
    (``$$(PersistStoreURL:s3://default/bucket)``), so a site's machine ads can
    choose the nearest storage, as the 2010 original did.
    """
    interval = _seconds_expr(o.interval)
    _seconds_expr(o.lifetime)  # validates unless match-time
    grace = int(o.vacate_grace)
    args = ["run", "--store", o.store, "--lifetime", o.lifetime, "--interval", o.interval, "--mode", o.mode,
            "--vacate-grace", "%ds" % grace, "--crash-limit", str(o.crash_limit), *o.run_args, "--", *o.payload]
    d: Dict[str, str] = {
        "universe": "vanilla",
        "executable": o.wrapper,
        "transfer_executable": "false",
        "arguments": condor_quote_args(args),
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT_OR_EVICT",
        # Only stdout/stderr come back; the checkpoint lives in the store, not in the sandbox.
        "+TransferOutput": '""',
        "output": "%s/%s.$(Cluster).$(Process).out" % (o.output_dir, o.name),
        "error": "%s/%s.$(Cluster).$(Process).err" % (o.output_dir, o.name),
        "log": "%s/%s.$(Cluster).log" % (o.output_dir, o.name),
        "want_io_proxy": "true",
        "kill_sig": "SIGTERM",
        "job_max_vacate_time": str(grace + 15),
        "want_graceful_removal": "true",
        "+PersistJob": "true",
        "+" + C.ATTR_NAME: classad_string(o.name),
        "+" + C.ATTR_STORE: classad_string(o.store),
        "on_exit_hold": "(ExitBySignal =?= false) && ((ExitCode =?= %d) || (ExitCode =?= %d))" % (C.EXIT_CONFIG, C.EXIT_CRASHLOOP),
        "on_exit_hold_reason": 'strcat("persistjob exit ", ExitCode, ": ", ifThenElse(isUndefined(%s), '
                               '"see the job\'s error file", %s))' % (C.ATTR_LAST_ERROR, C.ATTR_LAST_ERROR),
        "on_exit_hold_subcode": "ExitCode",
        "periodic_release": ("(HoldReasonCode =?= 3) && (HoldReasonSubCode =?= %d) && (NumHolds < %d) && "
                             "((time() - EnteredCurrentStatus) > %d * pow(2, NumHolds - 1))")
                            % (C.EXIT_CRASHLOOP, o.release_limit, o.release_base),
    }
    if interval is not None:
        d["+" + C.ATTR_INTERVAL] = str(interval)
    if o.forever:
        d["on_exit_remove"] = "false"
    else:
        d["on_exit_remove"] = "(ExitBySignal =?= false) && (ExitCode =?= 0)"
    if o.cron is not None:
        d.update(parse_cron(o.cron))
        if o.cron_window is not None:
            d["cron_window"] = str(int(o.cron_window))
        if o.cron_prep_time is not None:
            d["cron_prep_time"] = str(int(o.cron_prep_time))
    if o.initialdir:
        # a remote schedd does not know the submitter's working directory
        d["initialdir"] = o.initialdir
    if o.getenv:
        # e.g. 'AWS_*': the store's credentials and endpoint from the submitter's environment
        d["getenv"] = ", ".join(o.getenv)
    if o.transfer_input:
        d["transfer_input_files"] = ",".join(o.transfer_input)
    for key, value in o.extra:
        d[key] = value
    return d


def format_description(d: Dict[str, str], count: int) -> str:
    lines = ["%s = %s" % (k, v) for k, v in d.items()]
    lines.append("queue %d" % count)
    return "\n".join(lines) + "\n"


def default_wrapper() -> str:
    return shutil.which("persistjob") or "persistjob"


# ---------------------------------------------------------------- scheduler


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
        try:
            result = self.schedd.submit(self.h.Submit(description), count=count)
        except Exception as exc:
            raise _schedd_error("submit failed", exc) from None
        return int(result.cluster())

    def query(self, constraint: str, projection: Sequence[str] = ADS_PROJECTION) -> List[Dict[str, Any]]:
        try:
            ads = self.schedd.query(constraint=constraint, projection=list(projection))
        except Exception as exc:
            raise _schedd_error("query failed", exc) from None
        return [{k: ad.eval(k) if k in ad else None for k in projection} for ad in ads]

    def remove(self, constraint: str) -> int:
        try:
            result = self.schedd.act(self.h.JobAction.Remove, constraint)
        except Exception as exc:
            raise _schedd_error("remove failed", exc) from None
        try:
            return int(result["TotalSuccess"])
        except (KeyError, TypeError, ValueError):
            return 0


def jobspec_constraint(spec: str) -> str:
    """'12' -> cluster 12, '12.3' -> one job, else a ClassAd constraint."""
    if re.match(r"^\d+$", spec):
        return "ClusterId == %s" % spec
    m = re.match(r"^(\d+)\.(\d+)$", spec)
    if m:
        return "ClusterId == %s && ProcId == %s" % m.groups()
    return spec


# ------------------------------------------------------------------- status


class JobView:
    """One persistent job: the schedd's ad joined with the store's view, and its flags."""

    def __init__(self, ad: Dict[str, Any], generation: Optional[int] = None, last_commit: Optional[float] = None,
                 runs: Optional[int] = None, crash_streak: int = 0, fenced: int = 0, store_error: str = "",
                 flags: Optional[List[str]] = None) -> None:
        self.ad, self.generation, self.last_commit, self.runs = ad, generation, last_commit, runs
        self.crash_streak, self.fenced, self.store_error = crash_streak, fenced, store_error
        self.flags: List[str] = list(flags or [])

    def as_json(self) -> Dict[str, Any]:
        d = {k: v for k, v in self.ad.items() if v is not None}
        d.update(generation=self.generation, last_commit=self.last_commit, runs=self.runs,
                 crash_streak=self.crash_streak, fenced=self.fenced, flags=self.flags)
        if self.store_error:
            d["store_error"] = self.store_error
        return d


def _float(v: Any) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def flag_job(v: JobView, now: float, *, idle_long: float, default_interval: float, crash_flag: int = 2) -> List[str]:
    """Name what needs a human: STALLED, CRASHLOOP, HELD, FENCED, IDLE-LONG (pure)."""
    ad = v.ad
    flags = []
    status = ad.get("JobStatus")
    entered = _float(ad.get("EnteredCurrentStatus")) or now
    interval = _float(ad.get(C.ATTR_INTERVAL)) or default_interval
    if status == 5:
        flags.append("HELD")
    if status == 2:
        last = v.last_commit or _float(ad.get(C.ATTR_LAST_COMMIT))
        since = now - max(last or 0.0, entered)
        if since > 2 * interval:
            flags.append("STALLED")
    if v.crash_streak >= crash_flag or ad.get("HoldReasonSubCode") == C.EXIT_CRASHLOOP:
        flags.append("CRASHLOOP")
    if v.fenced:
        flags.append("FENCED")
    if status == 1 and now - entered > idle_long:
        flags.append("IDLE-LONG")
    return flags


class StoreCache:
    """One storage client per store URL (jobs of one submission share their store)."""

    def __init__(self, timeout: float) -> None:
        import threading

        self.timeout = timeout
        self._stores: Dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> Any:
        with self._lock:
            if url not in self._stores:
                from .storage import RetryingBackend, get_backend

                self._stores[url] = RetryingBackend(get_backend(url), self.timeout)
            return self._stores[url]


def store_view(v: JobView, store_url: Optional[str], fenced_window: float, now: float, stores: StoreCache) -> None:
    """Fill the storage side of a job's view (newest commit, runs, fenced notes)."""
    from .checkpoint import JobLog

    gid = v.ad.get("GlobalJobId")
    if not store_url or not gid or "$$(" in store_url:
        v.store_error = "no store URL in the job ad" if not store_url or "$$(" in store_url else "no GlobalJobId"
        return
    try:
        joblog = JobLog(stores.get(store_url), str(gid))
        head = joblog.head()
        v.runs = head.run
        v.generation = head.generation
        v.crash_streak = head.crash_streak
        last = joblog.last_commit(head)
        v.last_commit = float(last.data.get("time", 0)) if last else None
        v.fenced = sum(1 for n in joblog.fenced_notes(since=now - fenced_window)
                       if now - float(n.get("time", 0)) < fenced_window)
    except PersistJobError as exc:
        v.store_error = exc.message


def status_table(views: Iterable[JobView], now: float) -> str:
    rows = [("JOB", "NAME", "STATUS", "STARTS", "RUNS", "GEN", "LAST COMMIT", "FLAGS")]
    for v in views:
        ad = v.ad
        last = "-" if not v.last_commit else ("%ds ago" % (now - v.last_commit))
        rows.append(("%s.%s" % (ad.get("ClusterId"), ad.get("ProcId")), str(ad.get(C.ATTR_NAME) or "-"),
                     JOB_STATUS.get(ad.get("JobStatus"), str(ad.get("JobStatus"))), str(ad.get("NumJobStarts") or 0),
                     "-" if v.runs is None else str(v.runs), "-" if v.generation is None else str(v.generation), last,
                     ",".join(v.flags) or "ok"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for v in views:
        if v.ad.get("JobStatus") == 5 and v.ad.get("HoldReason"):
            out.append("%s.%s held: %s" % (v.ad.get("ClusterId"), v.ad.get("ProcId"), v.ad.get("HoldReason")))
        if v.store_error:
            out.append("%s.%s store: %s" % (v.ad.get("ClusterId"), v.ad.get("ProcId"), v.store_error))
    return "\n".join(out)


def collect_status(scheduler: Scheduler, constraint: Optional[str], store_override: Optional[str], *,
                   idle_long: float, default_interval: float, fenced_window: float,
                   now: Optional[float] = None) -> List[JobView]:
    now = time.time() if now is None else now
    c = "(%s =?= true)" % C.ATTR_JOB
    if constraint:
        c += " && (%s)" % constraint
    views = [JobView(ad) for ad in scheduler.query(c)]
    stores = StoreCache(15.0)

    def fill(v: JobView) -> None:
        store_view(v, store_override or v.ad.get(C.ATTR_STORE), fenced_window, now, stores)
        v.flags = flag_job(v, now, idle_long=idle_long, default_interval=default_interval)

    # A few requests per job (log head, newest commit, fenced notes): in parallel, so that a site
    # check over a thousand jobs does not wait for them one after another.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(8, len(views))), thread_name_prefix="persistjob-status") as pool:
        list(pool.map(fill, views))
    return views


def purge_store(store: Any, job_id: str) -> int:
    """Delete every stored object of a job (``rm --purge``); return the count."""
    from .checkpoint import job_key

    keys = [o.key for o in store.list(job_key(job_id) + "/")]
    store.delete_many(keys)
    return len(keys)


def split_extra(items: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--append takes KEY=VALUE, got %r" % item)
        out.append((key.strip(), value.strip()))
    return tuple(out)


def describe_for_humans(o: SubmitOptions) -> str:
    return "persistent job %r: %s, %d cop%s, store %s" % (
        o.name, "forever" if o.forever else "until done", o.count, "y" if o.count == 1 else "ies", o.store) + \
        (" (cron %s)" % o.cron if o.cron else "") + "; payload: " + " ".join(shlex.quote(p) for p in o.payload)
