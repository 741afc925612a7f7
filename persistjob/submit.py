"""Submit side for HTCondor: the submit description of a persistent job.

``build_description()`` is the one pure function that turns options into a submit description (a
plain dict, tested without a schedd); ``schedd.py`` submits it.  The policy expressions are derived
from the exit-code contract (``contract.py``):

* "complete" (0): forever jobs run again (``on_exit_remove = false``); until-done jobs leave;
* "hold" (78) and "hold-release" (79): ``on_exit_hold`` with the wrapper's one-line reason
  (``PersistLastError``, set through chirp just before it exits) and the exit code as subcode;
* "hold-release" (79) is released after a doubling delay, up to a limit of holds;
* "rerun-later" (75) is a hold of its own subcode too, released after a doubling delay (capped):
  HTCondor would otherwise re-run the job at once, against a store that is down;
* "rerun" (85, 1): the job simply runs again.
"""

import os
import re
import shlex
from typing import Any, Dict, Optional, Sequence, Tuple

from . import constants as C
from . import contract as X
from .credentials import Shipment, check_environment, check_getenv, environment_names, environment_value
from .errors import ConfigError
from .options import MODE_NAMES, RUN_OPTIONS, coerce, is_match_time, run_argv
from .quoting import classad_string, condor_quote_args

#: Run options always written out in a job's arguments, so that the job ad says how it runs.
SHOWN_RUN_OPTIONS = ("store", "lifetime", "interval", "mode", "vacate_grace", "crash_limit")


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
    and ``persistjob submit`` is measured against ``condor_submit``.

    ``run`` holds the run options for the wrapper (``options.RUN_OPTIONS``: parsed values, text, or
    match-time ``$$(...)`` strings); ``store``, ``lifetime``, ``interval``, ``mode``,
    ``vacate_grace`` and ``crash_limit`` may also be given as keywords.
    """

    __slots__ = ("payload", "count", "forever", "name", "wrapper", "bundle", "transfer_payload", "shipment", "grid",
                 "grid_env", "release_limit",
                 "release_base", "retry_base",
                 "cron", "cron_window", "cron_prep_time", "transfer_input", "output_dir", "getenv", "initialdir",
                 "extra", "run")

    def __init__(self, store: str, payload: Sequence[str], count: int = 1, forever: bool = True,
                 name: str = "persistjob", wrapper: Optional[str] = None, bundle: str = "persistjob.pyz",
                 transfer_payload: bool = True, shipment: Shipment = Shipment(), grid: Optional[str] = None,
                 grid_env: Sequence[Tuple[str, str]] = (),
                 release_limit: int = X.DEFAULT_RELEASE_LIMIT,
                 release_base: float = X.DEFAULT_RELEASE_BASE, retry_base: float = X.DEFAULT_RETRY_BASE,
                 cron: Optional[str] = None, cron_window: Optional[int] = None, cron_prep_time: Optional[int] = None,
                 transfer_input: Sequence[str] = (), output_dir: str = ".", getenv: Sequence[str] = (),
                 initialdir: Optional[str] = None, extra: Sequence[Tuple[str, str]] = (), **run: Any) -> None:
        if not payload:
            raise ConfigError("no payload given (persistjob submit --store URL ... -- PAYLOAD ARGS...)")
        if count < 1:
            raise ConfigError("--count must be at least 1")
        run = {k: coerce(k, v) for k, v in run.items() if v is not None}
        if "mode" in run and run["mode"] not in MODE_NAMES:
            raise ConfigError("unknown mode %r" % run["mode"])
        if not re.match(r"^[A-Za-z0-9_.-]+$", name):
            raise ConfigError("--name may use letters, digits, '_', '.' and '-' only")
        if cron is not None and not forever:
            raise ConfigError("--cron jobs run on a schedule forever; --until-done does not apply")
        run["store"] = store
        self.run: Dict[str, Any] = run
        self.payload, self.count, self.forever, self.name, self.wrapper = tuple(payload), count, forever, name, wrapper
        self.bundle, self.transfer_payload, self.shipment = bundle, transfer_payload, shipment
        self.grid, self.grid_env = grid, tuple(grid_env)
        if grid is not None and not re.match(r"^arc \S+$", grid):
            raise ConfigError("--grid takes an ARC CE: 'arc https://HOST:PORT/arex/rest/1.0' (got %r)" % grid)
        self.release_limit, self.release_base, self.retry_base = release_limit, release_base, retry_base
        self.cron, self.cron_window, self.cron_prep_time = cron, cron_window, cron_prep_time
        self.transfer_input, self.output_dir, self.getenv = tuple(transfer_input), output_dir, tuple(getenv)
        self.initialdir, self.extra = initialdir, tuple(extra)
        check_getenv(self.getenv, {})
        for key, value in self.extra:
            if key.lower() == "environment":
                check_environment(environment_names(value))

    def get(self, dest: str) -> Any:
        """A run option's value (its default when not given)."""
        return self.run.get(dest, next(o.default for o in RUN_OPTIONS if o.dest == dest))

    @property
    def store(self) -> str:
        return str(self.run["store"])

    def __repr__(self) -> str:
        return "SubmitOptions(%s)" % ", ".join("%s=%r" % (k, getattr(self, k)) for k in self.__slots__)


def _exit_in(codes: Sequence[int]) -> str:
    tests = ["(ExitCode =?= %d)" % c for c in codes]
    return tests[0] if len(tests) == 1 else "(%s)" % " || ".join(tests)


#: Holds by this policy only (on_exit_hold: HoldReasonCode 3, "JobPolicy"): not a user's condor_hold,
#: not the gridmanager's hold after each run of a grid job.
POLICY_HOLDS = "ifThenElse(isUndefined(NumHoldsByReason.JobPolicy), 0, NumHoldsByReason.JobPolicy)"
#: What HTCondor-G does to a grid job (ARC) that exited with on_exit_remove false: it holds it. The
#: next run is a release away.
GRID_RERUN_HOLD = '((HoldReasonCode =?= 0) && (HoldReason =?= "Unspecified gridmanager error"))'
#: Any other hold of HTCondor-G (HoldReasonCode 0: a CE that answered "HTTP response 500" to a proxy
#: delegation, a submission refused for a while) is transient for a job that must live on: released
#: after the contract's try-later delay, as a 75 would be.  A user's condor_hold (code 1) stays.
GRID_TRANSIENT_HOLD = ('((HoldReasonCode =?= 0) && (HoldReason =!= "Unspecified gridmanager error") && '
                       '((time() - EnteredCurrentStatus) > %d))')


def policy(forever: bool, release_limit: int, release_base: float, retry_base: float, grid: bool = False) -> Dict[str, str]:
    """The HTCondor policy expressions of a persistent job, derived from the exit-code contract."""
    held = X.codes(X.HOLD) + X.codes(X.HOLD_RELEASE) + X.codes(X.RERUN_LATER)
    d = {
        "on_exit_hold": "(ExitBySignal =?= false) && %s" % _exit_in(held),
        "on_exit_hold_reason": 'strcat("persistjob exit ", ExitCode, ": ", ifThenElse(isUndefined(%s), '
                               '"see the job\'s error file", %s))' % (C.ATTR_LAST_ERROR, C.ATTR_LAST_ERROR),
        "on_exit_hold_subcode": "ExitCode",
        "periodic_release": " || ".join(
            ["((HoldReasonCode =?= 3) && (HoldReasonSubCode =?= %d) && (%s < %d) && "
             "((time() - EnteredCurrentStatus) > %s))" % (c, POLICY_HOLDS, release_limit,
                                                          X.retry_delay_classad(release_base, POLICY_HOLDS))
             for c in X.codes(X.HOLD_RELEASE)] +
            ["((HoldReasonCode =?= 3) && (HoldReasonSubCode =?= %d) && ((time() - EnteredCurrentStatus) > %s))"
             % (c, X.retry_delay_classad(retry_base, POLICY_HOLDS)) for c in X.codes(X.RERUN_LATER)] +
            ([GRID_RERUN_HOLD, GRID_TRANSIENT_HOLD % int(retry_base)] if grid else [])),
    }
    d["on_exit_remove"] = "false" if forever else "(ExitBySignal =?= false) && %s" % _exit_in(X.codes(X.COMPLETE))
    return d


def _arc_url(grid: str) -> str:
    """``arc URL`` with the REST path HTCondor's ARC GAHP needs: it fills in only a missing path, and
    uses ``https://host:port/arex`` as it is, which answers 404 forever (the job idles)."""
    url = grid.split(None, 1)[1].rstrip("/")
    if url.endswith("/arex"):
        url += "/rest/1.0"
    return "arc " + url


def _seconds(value: Any) -> Optional[int]:
    return None if is_match_time(value) else int(value)


#: Where a payload is the site's own program, not a file to send (an interpreter, a system tool).
_SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/etc/", "/opt/", "/cvmfs/")


def _payload_inputs(o: SubmitOptions) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """The payload as the job runs it, and the files to send with it: in bundle mode, a payload
    that is a file of the submit machine outside the system directories (``./run.sh``) is
    transferred and run from the job's directory; an interpreter or a match-time value stays."""
    first = o.payload[0]
    if o.wrapper or not o.transfer_payload or is_match_time(first) or "/" not in first:
        return o.payload, ()
    path = os.path.abspath(first)
    if path.startswith(_SYSTEM_DIRS) or not os.path.isfile(path):
        return o.payload, ()
    return ("./" + os.path.basename(path),) + o.payload[1:], (path,)


def build_description(o: SubmitOptions) -> Dict[str, str]:
    """The submit description of a persistent job, as a plain dict.

    Store URL, lifetime, interval and payload may be match-time values
    (``$$(PersistStoreURL:s3://default/bucket)``), so a site's machine ads can
    choose the nearest storage, as the 2010 original did.
    """
    interval = _seconds(o.get("interval"))
    grace = _seconds(o.get("vacate_grace"))
    if grace is None:
        raise ConfigError("--vacate-grace cannot be a match-time value (it sets job_max_vacate_time)")
    payload, inputs = _payload_inputs(o)
    args = ["run", *run_argv(o.run, always=SHOWN_RUN_OPTIONS), "--", *payload]
    d: Dict[str, str] = {"universe": "vanilla"} if not o.grid else {"universe": "grid", "grid_resource": _arc_url(o.grid)}
    if o.wrapper:  # persistjob installed on the workers beforehand
        d.update(executable=o.wrapper, transfer_executable="false")
    else:  # the bundle travels with the job: the site needs nothing but python3
        d["executable"] = o.bundle
    d.update({
        "arguments": condor_quote_args(args),
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT_OR_EVICT",
        # Only stdout/stderr come back; the checkpoint lives in the store, not in the sandbox.
        "+TransferOutput": '""',
        "output": "%s/%s.$(Cluster).$(Process).out" % (o.output_dir, o.name),
        "error": "%s/%s.$(Cluster).$(Process).err" % (o.output_dir, o.name),
        "log": "%s/%s.$(Cluster).log" % (o.output_dir, o.name),
    })
    if not o.grid:  # chirp and the vacate grace are the starter's; a CE has neither
        d.update({"want_io_proxy": "true", "kill_sig": "SIGTERM", "job_max_vacate_time": str(grace + 15),
                  "want_graceful_removal": "true"})
    d.update({
        "+PersistJob": "true",
        "+" + C.ATTR_NAME: classad_string(o.name),
        "+" + C.ATTR_STORE: classad_string(o.store),
    })
    pol = policy(o.forever, o.release_limit, int(o.release_base), int(o.retry_base), grid=bool(o.grid))
    d.update((k, v) for k, v in pol.items() if k != "on_exit_remove")
    if interval is not None:
        d["+" + C.ATTR_INTERVAL] = str(interval)
    d["on_exit_remove"] = pol["on_exit_remove"]
    if o.cron is not None:
        d.update(parse_cron(o.cron))
        if o.cron_window is not None:
            d["cron_window"] = str(int(o.cron_window))
        if o.cron_prep_time is not None:
            d["cron_prep_time"] = str(int(o.cron_prep_time))
    if o.initialdir:
        # a remote schedd does not know the submitter's working directory
        d["initialdir"] = o.initialdir
    if o.getenv and not o.grid:
        # e.g. AWS_ENDPOINT_URL_S3: what the job needs of the submitter's environment (no secret)
        d["getenv"] = ", ".join(o.getenv)
    files = [*inputs, *o.shipment.files, *o.transfer_input]
    if files:
        d["transfer_input_files"] = ",".join(files)
    for key, value in o.shipment.commands:
        d[key] = value
    extra = dict(o.extra)
    if o.grid:
        # On a CE the payload sees no job ad, and $$() is not expanded in the grid universe: the job's
        # identity goes in an expression-valued Environment, which HTCondor-G evaluates at each submission.
        if any(k.lower() == "environment" for k, _ in o.extra):
            raise ConfigError("--grid builds the job's environment itself; give variables with --getenv instead")
        pairs = list(o.shipment.environment) + list(o.grid_env)
        d["+Environment"] = 'strcat("%s=", GlobalJobId%s)' % (C.ENV_JOB_ID, "".join(
            ', " %s=%s"' % (k, v.replace("\\", "\\\\").replace('"', '\\"')) for k, v in pairs))
    elif o.shipment.environment:  # paths only: the secrets are in the files
        user_env = next((v for k, v in o.extra if k.lower() == "environment"), "")
        extra = {k: v for k, v in extra.items() if k.lower() != "environment"}
        d["environment"] = environment_value(o.shipment.environment, user_env)
    for key, value in extra.items():
        d[key] = value
    return d


def format_description(d: Dict[str, str], count: int) -> str:
    lines = ["%s = %s" % (k, v) for k, v in d.items()]
    lines.append("queue %d" % count)
    return "\n".join(lines) + "\n"


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
