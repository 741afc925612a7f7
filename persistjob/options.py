"""The run options of ``persistjob run``, declared once.

:data:`RUN_OPTIONS` is the one table of them: flag, default, parser, formatter and help.  From it
come the ``run`` command line, the same options on ``local``, ``submit`` and ``wq submit``
(:func:`add_run_options`), :class:`RunOptions` (validated at construction), and the exact argument
list those commands hand on to ``persistjob run`` (:func:`run_argv`): options are forwarded from
their parsed values, never by copying the user's words, so an abbreviation or a typo can never
reach a job.  On ``submit`` some values may be HTCondor match-time expressions (``$$(Attr:default)``);
they pass through as written.
"""

import argparse
import signal
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from . import constants as C
from .errors import ConfigError
from .identity import parse_duration, parse_size

#: The ways a payload's state is made consistent (persistjob.worker.modes has one class each).
MODE_NAMES = ("freeze", "signal", "exit-code", "criu")
#: The modes whose restore can fail after the files restored intact, so that --criu-cold-start means something.
COLD_START_MODES = ("criu",)


def format_duration(seconds: float) -> str:
    """3600 -> '1h', 5400 -> '1h30m', 90 -> '1m30s', 1.5 -> '1.5s' (parse_duration reads it back)."""
    rest = float(seconds)
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        n = int(rest // size)
        if n:
            out += "%d%s" % (n, unit)
            rest -= n * size
    if rest or not out:
        out += ("%.6f" % rest).rstrip("0").rstrip(".") + "s"
    return out


def parse_signal(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(getattr(signal, name))
    except AttributeError:
        raise ConfigError("unknown signal %r" % text) from None


def format_signal(sig: int) -> str:
    try:
        return signal.Signals(sig).name[3:]
    except ValueError:
        return str(sig)


def _format_size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("k", 10)):
        if n and n % (1 << shift) == 0:
            return "%d%s" % (n >> shift, unit)
    return str(n)


class Opt(NamedTuple):
    dest: str
    default: Any
    parse: Callable[[str], Any]
    render: Callable[[Any], str]
    help: str
    metavar: Optional[str] = None
    choices: Optional[Tuple[str, ...]] = None
    switch: bool = False  # a flag without a value (default False)

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")


_dur, _fdur = parse_duration, format_duration


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError("expected true or false, not %r" % text)

RUN_OPTIONS: Tuple[Opt, ...] = (
    Opt("store", None, str, str, "file:///path, s3://bucket/prefix[?endpoint=...], root://..., davs://...", "URL"),
    Opt("job_id", None, str, str, "default: GlobalJobId from $_CONDOR_JOB_AD, else $PERSISTJOB_JOB_ID", "ID"),
    Opt("checkpoint_dir", "persistjob-checkpoint", str, str,
        "payload state and working directory (default ./persistjob-checkpoint; replaced on restore)", "DIR"),
    Opt("lifetime", C.DEFAULT_LIFETIME, _dur, _fdur, "run length before a final checkpoint and exit 85 (default 12h)"),
    Opt("interval", C.DEFAULT_INTERVAL, _dur, _fdur, "checkpoint interval (default 1h)"),
    Opt("mode", "freeze", str, str, "how the payload state is made consistent (default freeze)", choices=MODE_NAMES),
    Opt("vacate_grace", C.DEFAULT_VACATE_GRACE, _dur, _fdur, "time allowed for the final checkpoint after SIGTERM (default 1m)"),
    Opt("keep", C.DEFAULT_KEEP, int, str, "generations retained (default 3)"),
    Opt("crash_limit", C.DEFAULT_CRASH_LIMIT, int, str, "consecutive failed runs without a commit before exit 79 (default 3)"),
    Opt("storage_timeout", C.DEFAULT_STORAGE_TIMEOUT, _dur, _fdur, "retry budget of one storage operation (default 5m)"),
    Opt("chunk_size", C.DEFAULT_CHUNK_SIZE, parse_size, _format_size, "chunk size (default 1M)"),
    Opt("checkpoint_signal", int(signal.SIGUSR1), parse_signal, format_signal, "signal mode: signal sent (default USR1)"),
    Opt("marker_timeout", 600.0, _dur, _fdur, "signal mode: wait for the marker (default 10m)"),
    Opt("lease_check", 60.0, _dur, _fdur, "how often to check for a newer owner (default 1m)"),
    Opt("gc_grace", 3600.0, _dur, _fdur, "spare unreferenced objects younger than this (default 1h)"),
    Opt("workers", 8, int, str, "parallel transfers (default 8)"),
    Opt("codec", C.DEFAULT_CODEC, str, str, "compression of what is stored: zlib (default: any Python restores it) or "
        "zstd (faster, needs the zstandard module wherever the job restores)", choices=C.CODECS),
    Opt("criu_cold_start", False, parse_bool, str, "criu mode: when no retained generation's images restore, start "
        "the payload anew instead of holding the job", switch=True),
)
_BY_DEST = {o.dest: o for o in RUN_OPTIONS}


def is_match_time(value: Any) -> bool:
    return isinstance(value, str) and "$$(" in value


def coerce(dest: str, value: Any) -> Any:
    """A run option's value from text (parsed) or as given; a match-time string passes through."""
    if isinstance(value, str) and not is_match_time(value):
        return _BY_DEST[dest].parse(value)
    return value


class RunOptions:
    """The validated options of one ``persistjob run``."""

    __slots__ = ("payload",) + tuple(o.dest for o in RUN_OPTIONS)
    # For type checkers only (a unit test keeps these names equal to RUN_OPTIONS).
    payload: Tuple[str, ...]
    store: str
    job_id: Optional[str]
    checkpoint_dir: str
    interval: float
    lifetime: float
    mode: str
    vacate_grace: float
    keep: int
    crash_limit: int
    storage_timeout: float
    chunk_size: int
    checkpoint_signal: int
    marker_timeout: float
    lease_check: float
    gc_grace: float
    workers: int
    codec: str
    criu_cold_start: bool

    def __init__(self, payload: Sequence[str], **values: Any) -> None:
        unknown = set(values) - set(_BY_DEST)
        if unknown:
            raise TypeError("unknown run options: %s" % ", ".join(sorted(unknown)))
        self.payload = tuple(payload)
        for o in RUN_OPTIONS:
            v = values.get(o.dest)
            setattr(self, o.dest, o.default if v is None else v)
        if not self.payload:
            raise ConfigError("no payload given (persistjob run --store URL -- PAYLOAD ARGS...)")
        if not self.store:
            raise ConfigError("--store is required")
        if self.mode not in MODE_NAMES:
            raise ConfigError("unknown mode %r (choose %s)" % (self.mode, ", ".join(MODE_NAMES)))
        for name in ("interval", "lifetime", "vacate_grace", "storage_timeout", "marker_timeout", "lease_check"):
            if getattr(self, name) <= 0:
                raise ConfigError("--%s must be positive" % name.replace("_", "-"))
        if self.gc_grace < 0:
            raise ConfigError("--gc-grace must not be negative")
        if self.keep < 1 or self.crash_limit < 1 or self.workers < 1:
            raise ConfigError("--keep, --crash-limit and --workers must be at least 1")
        if self.codec not in C.CODECS:
            raise ConfigError("unknown codec %r (choose %s)" % (self.codec, " or ".join(C.CODECS)))
        if not 4096 <= self.chunk_size <= (64 << 20):
            raise ConfigError("--chunk-size must be between 4k and 64M")
        if self.criu_cold_start and self.mode not in COLD_START_MODES:
            raise ConfigError("--criu-cold-start applies to --mode criu only")

    def values(self) -> Dict[str, Any]:
        return {o.dest: getattr(self, o.dest) for o in RUN_OPTIONS}

    def __repr__(self) -> str:
        return "RunOptions(%s)" % ", ".join("%s=%r" % (k, getattr(self, k)) for k in self.__slots__)


def add_run_options(p: argparse.ArgumentParser, skip: Iterable[str] = (), match_time: Iterable[str] = ()) -> None:
    """The run options on a parser.  Defaults stay None, so that only what was given is forwarded;
    ``match_time`` options accept HTCondor ``$$(...)`` values as written."""
    skip, late = set(skip), set(match_time)
    g = p.add_argument_group("run options (as for persistjob run)")
    for o in RUN_OPTIONS:
        if o.dest in skip:
            continue
        kind: Callable[[str], Any] = o.parse
        if o.switch:
            g.add_argument(o.flag, dest=o.dest, action="store_const", const=True, default=None, help=o.help)
            continue
        if o.dest in late:
            kind = (lambda parse: lambda text: text if is_match_time(text) else parse(text))(o.parse)
        g.add_argument(o.flag, dest=o.dest, type=kind, default=None, choices=o.choices, metavar=o.metavar,
                       required=o.dest == "store", help=o.help)


def given(ns: argparse.Namespace, skip: Iterable[str] = ()) -> Dict[str, Any]:
    """The run options that were given on a command line (parsed values)."""
    skip = set(skip)
    return {o.dest: getattr(ns, o.dest) for o in RUN_OPTIONS
            if o.dest not in skip and getattr(ns, o.dest, None) is not None}


def run_options(ns: argparse.Namespace, payload: Sequence[str], **override: Any) -> RunOptions:
    values = given(ns)
    values.update(override)
    return RunOptions(payload, **{k: coerce(k, v) for k, v in values.items()})


def run_argv(values: Mapping[str, Any], always: Iterable[str] = ()) -> List[str]:
    """``--flag value`` pairs for ``persistjob run``, in table order: each option given (and not at its
    default), plus those in ``always`` (at their default when not given)."""
    always = set(always)
    out: List[str] = []
    for o in RUN_OPTIONS:
        if o.dest in values and values[o.dest] is not None:
            v = values[o.dest]
        elif o.dest in always:
            v = o.default
        else:
            continue
        if o.dest not in always and not is_match_time(v) and coerce(o.dest, v) == o.default:
            continue
        if o.switch:
            out += [o.flag] if coerce(o.dest, v) else []
            continue
        out += [o.flag, v if is_match_time(v) else o.render(coerce(o.dest, v))]
    return out
