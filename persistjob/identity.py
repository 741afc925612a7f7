"""Job identity and small parsing and formatting helpers shared by the CLI and the wrapper."""

import re
import time
from typing import Mapping, Optional, Sequence

from .errors import ConfigError

_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '1h30m', '2d' -> seconds."""
    t = str(text).strip().lower()
    m = _DURATION_RE.match(t)
    if not t or not m or not any(m.groups()):
        raise ConfigError("invalid duration %r (examples: 90s, 5m, 1h30m, 2d)" % (text,))
    d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s


def parse_size(text: str) -> int:
    """'1048576', '512k', '1M', '1MiB' -> bytes."""
    m = re.match(r"^(\d+)\s*([kmg]?)(i?b)?$", str(text).strip().lower())
    if not m:
        raise ConfigError("invalid size %r (examples: 512k, 1M)" % (text,))
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2)]


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return "%d B" % n  # pragma: no cover


def format_utc(t: Optional[float]) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM:SS`` in UTC; ``-`` for none."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


def shown_url(url: object) -> str:
    """A store URL as an error message shows it: without its query (tokens ride there) and with any
    user part (``user:password@``) masked."""
    if not isinstance(url, str):
        return "(not a string)"
    head = url.split("?", 1)[0]
    scheme, sep, rest = head.partition("://")
    if not sep:
        scheme, rest = "", head
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return scheme + sep + authority + slash + path


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of text as left-aligned columns two spaces apart (the first row is the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def read_classad_attr(path: str, attr: str) -> Optional[str]:
    """Value of ``attr`` in an old-style ClassAd file (``Attr = value`` lines).

    String values are unquoted; other values are returned as written.  This
    is enough for ``GlobalJobId`` and keeps the worker free of the bindings.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = attr.lower()
    for line in lines:
        name, sep, value = line.partition("=")
        if not sep or name.strip().lower() != want:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = re.sub(r'\\(.)', r"\1", value[1:-1])
        return value
    return None


def check_job_id(job_id: str) -> str:
    if not job_id or len(job_id) > 1024 or any(ord(c) < 32 for c in job_id):
        raise ConfigError("invalid job ID %r" % (job_id,))
    return job_id


def resolve_job_id(explicit: Optional[str], environ: Mapping[str, str]) -> str:
    """--job-id, else GlobalJobId from $_CONDOR_JOB_AD, else $PERSISTJOB_JOB_ID."""
    if explicit:
        return check_job_id(explicit)
    ad = environ.get("_CONDOR_JOB_AD")
    if ad:
        gid = read_classad_attr(ad, "GlobalJobId")
        if gid:
            return check_job_id(gid)
    env = environ.get("PERSISTJOB_JOB_ID")
    if env:
        return check_job_id(env)
    raise ConfigError("no job ID: give --job-id, run under HTCondor ($_CONDOR_JOB_AD with GlobalJobId) "
                      "or set PERSISTJOB_JOB_ID")


def slot_name(environ: Mapping[str, str]) -> str:
    ad = environ.get("_CONDOR_MACHINE_AD")
    if ad:
        name = read_classad_attr(ad, "Name")
        if name:
            return name
    return environ.get("_CONDOR_SLOT", "")


def host_and_slot(environ: Mapping[str, str]) -> str:
    import socket

    slot = slot_name(environ)
    return slot or socket.gethostname()

