"""``persistjob history``: a job's runs from its run records in the store — where each ran, how long,
how it ended, what it restored and committed, the bytes it moved — as a table, as JSON, or drawn on a
time line (``--plot``, with matplotlib: the ``plot`` extra)."""

from typing import Any, Dict, List

from . import contract as X
from .errors import ConfigError
from .identity import format_bytes, format_table, format_utc
from .options import format_duration


def ended(run: Dict[str, Any]) -> str:
    """How a run ended, in a few words: its exit code and the contract's meaning, or its state."""
    code = run.get("exit_code")
    if code is None:
        return "running" if run.get("state") == "running" else (run.get("state") or "?")
    return "%d %s" % (code, X.meaning(int(code)))


def table(runs: List[Dict[str, Any]], now: float) -> str:
    rows = [("RUN", "HOST", "START (UTC)", "DURATION", "ENDED", "RESTORED", "GEN", "COMMITS", "UP", "DOWN",
             "FALLBACKS", "REASON")]
    for r in runs:
        end = r.get("end") or (now if r.get("state") == "running" else None)
        rows.append((str(r.get("run")), str(r.get("host") or "-"), format_utc(r.get("start")),
                     format_duration(round(end - r["start"])) if end and r.get("start") else "-", ended(r),
                     str(r.get("restored_generation", 0)), str(r.get("generation", 0)), str(r.get("commits", 0)),
                     format_bytes(r.get("bytes_uploaded", 0)), format_bytes(r.get("bytes_downloaded", 0)),
                     ",".join(str(f.get("generation")) for f in r.get("fallbacks") or []) or "-",
                     " ".join(str(r.get("reason") or "").split())))
    return format_table(rows)


def plot(runs: List[Dict[str, Any]], commits: List[Dict[str, Any]], path: str, title: str, now: float) -> None:
    """Runs as bars on a time line (one row per host), commits as ticks."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib (pip install 'persistjob[plot]')") from None
    hosts = sorted({str(r.get("host") or "?") for r in runs})
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * len(hosts)))
    colors = {0: "tab:green", X.EXIT_CHECKPOINTED: "tab:blue", X.EXIT_TEMPFAIL: "tab:orange"}
    t0 = min([r["start"] for r in runs if r.get("start")] or [now])
    for r in runs:
        if not r.get("start"):
            continue
        end = r.get("end") or now
        y = hosts.index(str(r.get("host") or "?"))
        code = r.get("exit_code")
        color = "tab:gray" if code is None else colors.get(int(code), "tab:red")
        ax.barh(y, (end - r["start"]) / 60, left=(r["start"] - t0) / 60, height=0.6, color=color)
    for c in commits:
        if c.get("time"):
            ax.axvline((c["time"] - t0) / 60, color="black", linewidth=0.5, alpha=0.4)
    ax.set_yticks(range(len(hosts)))
    ax.set_yticklabels(hosts)
    ax.set_xlabel("minutes since the first run (bars: runs, by how they ended; lines: commits)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
