"""``persistjob status``: the schedd's view of persistent jobs joined with their stores' view, and
the flags that name what needs a human.  The store side goes through the repository layer."""

import time
from typing import Any, Dict, Iterable, List, Optional

from . import constants as C
from . import contract as X
from .errors import PersistJobError
from .schedd import JOB_STATUS, Scheduler


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
    if v.crash_streak >= crash_flag or ad.get("HoldReasonSubCode") == X.EXIT_CRASHLOOP:
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
    from .repo import JobRepo

    gid = v.ad.get("GlobalJobId")
    if not store_url or not gid or "$$(" in store_url:
        v.store_error = "no store URL in the job ad" if not store_url or "$$(" in store_url else "no GlobalJobId"
        return
    try:
        repo = JobRepo(stores.get(store_url), str(gid))
        head = repo.head()
        v.runs = head.run
        v.generation = head.generation
        v.crash_streak = head.crash_streak
        last = repo.last_commit(head)
        v.last_commit = float(last.data.get("time", 0)) if last else None
        v.fenced = sum(1 for n in repo.fenced_notes(since=now - fenced_window)
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
