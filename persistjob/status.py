"""``persistjob status``: the schedd's view of persistent jobs joined with their stores' view, and
the flags that name what needs a human.  The store side goes through the repository layer."""

import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

from . import constants as C
from . import contract as X
from .errors import ConfigError, PersistJobError
from .identity import format_table
from .options import is_match_time
from .schedd import JOB_STATUS, Scheduler


class JobView:
    """One persistent job: the schedd's ad joined with the store's view, and its flags."""

    def __init__(self, ad: Dict[str, Any], generation: Optional[int] = None, last_commit: Optional[float] = None,
                 runs: Optional[int] = None, crash_streak: int = 0, fenced: int = 0, store_error: str = "",
                 flags: Optional[List[str]] = None) -> None:
        self.ad, self.generation, self.last_commit, self.runs = ad, generation, last_commit, runs
        self.crash_streak, self.fenced, self.store_error = crash_streak, fenced, store_error
        self.lost = 0  # runs that vanished or whose payload was killed from outside (not crashes)
        self.fenced_incidents = 0  # separate incidents of refused instances within the window
        self.fenced_persists = False  # refusals kept arriving within one incident
        self.commit_seconds = 0.0  # how long the newest commit took
        self.bytes: Optional[int] = None  # bytes of the newest generation
        self.store_answered = False
        self.from_summary = False  # read from the job's summary, not confirmed from its log
        self.flags: List[str] = list(flags or [])
        self.store_note: Optional["StoreNote"] = None  # what its store says of itself, if it answered

    def as_json(self) -> Dict[str, Any]:
        d = {k: v for k, v in self.ad.items() if v is not None}
        d.update(generation=self.generation, last_commit=self.last_commit, runs=self.runs,
                 crash_streak=self.crash_streak, lost_runs=self.lost, fenced=self.fenced,
                 fenced_incidents=self.fenced_incidents, flags=self.flags,
                 read_from="summary" if self.from_summary else ("log" if self.store_answered else None))
        if self.store_error:
            d["store_error"] = self.store_error
        if self.store_note is not None:
            d["store_shared_chunks"] = self.store_note.shared
            if self.store_note.shared:
                d["store_gc_since"] = self.store_note.gc_since  # null: no gc pass running
        return d


def _float(v: Any) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


#: A refused duplicate that is gone is information, not a problem: FENCED needs a human only when a
#: stale instance persists (refusals keep arriving in one incident: more than the two notes one
#: incident leaves, the displaced run's and the duplicate's) or incidents recur (3 in the window).
#: Notes less than INCIDENT_GAP apart are one incident; host names and note counts alone misjudge.
FENCED_INCIDENTS = 3
INCIDENT_GAP = 300.0


def fenced_incidents(times: Iterable[float]) -> Tuple[int, bool]:
    """(number of incidents, whether one of them has more notes than one incident leaves)."""
    clusters: List[List[float]] = []
    for t in sorted(times):
        if clusters and t - clusters[-1][-1] <= INCIDENT_GAP:
            clusters[-1].append(t)
        else:
            clusters.append([t])
    return len(clusters), any(len(c) > 2 for c in clusters)


def flag_job(v: JobView, now: float, *, idle_long: float, default_interval: float, crash_flag: int = 2) -> List[str]:
    """Name what needs a human: STALLED, CRASHLOOP, HELD, FENCED, IDLE-LONG, STORE? (pure).

    STALLED: running on the schedd, and no commit (the store's newest, else the job ad's
    PersistLastCommit set through chirp) for more than two intervals plus the last commit's duration
    since the later of that commit and the start of this run.  STORE?: the store did not answer in
    time (its side is unknown, not assumed fine)."""
    ad = v.ad
    flags = []
    status = ad.get("JobStatus")
    entered = _float(ad.get("EnteredCurrentStatus")) or now
    interval = _float(ad.get(C.ATTR_INTERVAL)) or default_interval
    if status == 5:
        flags.append("HELD")
    if status == 2:
        last = max(v.last_commit or 0.0, _float(ad.get(C.ATTR_LAST_COMMIT)) or 0.0)
        since = now - max(last, entered)
        if since > 2 * interval + v.commit_seconds:
            flags.append("STALLED")
    if v.crash_streak >= crash_flag or ad.get("HoldReasonSubCode") == X.EXIT_CRASHLOOP:
        flags.append("CRASHLOOP")
    if v.fenced_persists or v.fenced_incidents >= FENCED_INCIDENTS:
        flags.append("FENCED")
    if v.store_error == STORE_TIMEOUT:
        flags.append("STORE?")
    if status == 1 and now - entered > idle_long:
        flags.append("IDLE-LONG")
    return flags


class StoreNote(NamedTuple):
    """A store's own state, beside its jobs': whether it keeps chunks once for all its jobs
    (``?dedup=store``), and when the newest gc pass that may still be running took its lease (the
    store's clock; commits wait while it runs)."""

    url: str
    shared: bool
    gc_since: Optional[float]

    def line(self) -> str:
        if not self.shared:
            return "store %s: each job keeps its own chunks" % self.url
        gc = ("a gc pass is running (lease taken %s; commits wait for it)"
              % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.gc_since))
              if self.gc_since is not None else "no gc pass running")
        return "store %s: chunks kept once for all its jobs (dedup=store); %s" % (self.url, gc)


class StoreCache:
    """One storage client per store URL (jobs of one submission share their store), and each store's
    summaries and fenced notes, each from one listing."""

    def __init__(self, timeout: float) -> None:
        import threading

        self.timeout = timeout
        self._stores: Dict[str, Any] = {}
        self._lock = threading.Lock()
        self._listed: Dict[Tuple[str, str], Any] = {}
        self._list_locks: Dict[Tuple[str, str], Any] = {}
        #: Stores with enough jobs in this view that one listing of every job's summary beats one per job.
        self.bulk: Set[str] = set()
        #: What each store in view says of itself, by URL.
        self.notes: Dict[str, StoreNote] = {}

    def _once(self, what: str, url: str, make: Any) -> Any:
        import threading

        with self._lock:
            lock = self._list_locks.setdefault((what, url), threading.Lock())
        with lock:
            if (what, url) not in self._listed:
                self._listed[(what, url)] = make(self.get(url))
            return self._listed[(what, url)]

    def fenced(self, url: str, since: float) -> Dict[str, List[float]]:
        """{job key: fenced-note times since ``since``} of one store, listed once per status."""
        from .repo import fenced_index

        return self._once("fenced", url, lambda store: fenced_index(store, since))

    def summaries(self, url: str) -> Dict[str, Any]:
        """{job key: newest summary} of one store, listed once per status."""
        from .repo import summary_index

        return self._once("summaries", url, summary_index)

    def note(self, url: str, now: float) -> None:
        """What the store says of itself (``StoreNote``), read once per status; a store that does not
        answer gets none."""
        from .repo import shared

        def read(store: Any) -> "StoreNote":
            cfg = shared.peek_config(store)
            lease = shared.live_lease(store, cfg, now) if cfg.dedup else None
            return StoreNote(url, cfg.dedup, lease.mtime if lease else None)

        try:
            note = self._once("note", url, read)
        except PersistJobError:
            return
        with self._lock:
            self.notes[url] = note

    def get(self, url: str) -> Any:
        with self._lock:
            if url not in self._stores:
                from .storage import RetryingBackend, get_backend
                from .storage.counting import CountingBackend

                self._stores[url] = RetryingBackend(CountingBackend(get_backend(url)), self.timeout)
            return self._stores[url]

    def totals(self) -> Dict[str, Dict[str, int]]:
        """Requests by kind and bytes read, per store URL."""
        with self._lock:
            return {url: b.inner.totals() for url, b in self._stores.items()}


def _fill_from(v: JobView, head: Any, committed: Optional[Dict[str, Any]], note_times: List[float]) -> None:
    v.runs, v.generation, v.crash_streak, v.lost = head.run, head.generation, head.crash_streak, head.lost
    v.last_commit = float(committed.get("time", 0)) if committed else None
    v.commit_seconds = float(committed.get("seconds", 0) or 0) if committed else 0.0
    v.bytes = int(committed.get("bytes", 0) or 0) if committed else None
    v.fenced = len(note_times)
    v.fenced_incidents, v.fenced_persists = fenced_incidents(note_times)
    v.store_answered = True


def store_view(v: JobView, store_url: Optional[str], fenced_window: float, now: float, stores: StoreCache,
               from_log: bool = False) -> None:
    """Fill the storage side of a job's view (newest commit, runs, fenced notes).

    Unless ``from_log``: the job's summary (a recent log record's state in a key name, never ahead of
    the log) from the store's one listing of all summaries (a store with many jobs in this view) or
    its own, and the fenced notes from the store's one listing.  From the log: the head search, a
    walk back to the newest commit where the record does not carry it, and the job's notes (old and
    new places) -- what the caller does for a job that the summary would flag, before flagging it."""
    from .repo import JobRepo

    gid = v.ad.get("GlobalJobId")
    if not store_url or is_match_time(store_url):
        v.store_error = "no store URL in the job ad"
        return
    if not gid:
        v.store_error = "no GlobalJobId"
        return
    try:
        store = stores.get(store_url)
        repo = JobRepo(store, str(gid))
        since = now - fenced_window
        if from_log:
            summary = None
        elif store_url in stores.bulk:
            summary = stores.summaries(store_url).get(repo.key)
        else:
            summary = repo.summary()
        if summary is not None and (summary.committed is not None or summary.generation == 0):
            _fill_from(v, summary, summary.committed, stores.fenced(store_url, since).get(repo.key, []))
            v.from_summary = True
            return
        head = repo.head()
        committed = head.committed
        if committed is None and head.generation:
            last = repo.last_commit(head)
            committed = dict(last.data) if last else None
        times = [float(n.get("time", 0)) for n in repo.fenced_notes(since=since)]
        _fill_from(v, head, committed, [t for t in times if now - t < fenced_window])
        v.from_summary = False
    except PersistJobError as exc:
        v.store_error = exc.message


#: From this many jobs of one store in a view on, status lists all the store's summaries at once (a
#: thousand per request on S3) rather than each job's: a store shared by many more jobs than are asked
#: about is not listed whole for a few.
BULK_MIN = 20

#: Flags that a summary behind its log could raise wrongly: confirmed from the log before they are shown.
CONFIRM_FROM_LOG = ("STALLED", "CRASHLOOP")


def _label(ad: Dict[str, Any]) -> str:
    """HTCondor's CLUSTER.PROC, or the scheduler's own label (a Slurm job ID)."""
    return str(ad.get("JobLabel") or "%s.%s" % (ad.get("ClusterId"), ad.get("ProcId")))


def _reason(v: JobView) -> str:
    """Why a job needs a look, in its own row: the hold reason, the store's error."""
    parts = []
    if v.ad.get("JobStatus") == 5 and v.ad.get("HoldReason"):
        parts.append("held: %s" % " ".join(str(v.ad.get("HoldReason")).split()))
    if v.store_error:
        parts.append("store: %s" % v.store_error)
    return "; ".join(parts)


def status_table(views: Iterable[JobView], now: float) -> str:
    """One line per job; the last column says why a flagged job is held or unread."""
    rows = [("JOB", "NAME", "STATUS", "STARTS", "RUNS", "LOST", "GEN", "LAST COMMIT", "FLAGS", "REASON")]
    for v in views:
        ad = v.ad
        when = v.last_commit or _float(ad.get(C.ATTR_LAST_COMMIT))  # the store's, else what chirp set
        last = "-" if not when else ("%ds ago" % (now - when))
        rows.append((_label(ad), str(ad.get(C.ATTR_NAME) or "-"),
                     JOB_STATUS.get(ad.get("JobStatus"), str(ad.get("JobStatus"))), str(ad.get("NumJobStarts") or 0),
                     "-" if v.runs is None else str(v.runs), "-" if v.runs is None else str(v.lost),
                     "-" if v.generation is None else str(v.generation), last,
                     ",".join(v.flags) or "ok", _reason(v)))
    return format_table(rows)


STORE_TIMEOUT = "the store did not answer in time"


def _in_threads(views: List[Any], fill: Any, deadline: float) -> None:
    """``fill`` every view (or store) by 8 daemon threads until ``deadline``: a site check over a
    thousand jobs does not wait for them one after another, and a store that hangs is given up on at
    the deadline (a daemon thread still waiting on it does not keep the command from exiting)."""
    import queue
    import threading

    todo: "queue.Queue[Any]" = queue.Queue()
    for v in views:
        todo.put(v)

    def work() -> None:
        while True:
            try:
                v = todo.get_nowait()
            except queue.Empty:
                return
            fill(v)

    threads = [threading.Thread(target=work, name="persistjob-status", daemon=True) for _ in range(min(8, len(views)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def collect_status(scheduler: Scheduler, constraint: Optional[str], store_override: Optional[str], *,
                   idle_long: float, default_interval: float, fenced_window: float,
                   timeout: float = 20.0, clock: Any = time.time,
                   stores: Optional[StoreCache] = None, from_log: bool = False) -> Tuple[List[JobView], float]:
    """Every persistent job's view, within ``timeout`` seconds whatever the stores do; and the one
    "now" (read after the reads) from which all ages and flags are computed."""
    views = [JobView(ad) for ad in scheduler.persistent_jobs(constraint)]
    stores = StoreCache(max(1.0, timeout * 0.75)) if stores is None else stores
    started = clock()
    deadline = time.monotonic() + timeout

    def url(v: JobView) -> Optional[str]:
        return store_override or v.ad.get(C.ATTR_STORE)

    per_store: Dict[Optional[str], int] = {}
    for v in views:
        per_store[url(v)] = per_store.get(url(v), 0) + 1
    stores.bulk = {u for u, n in per_store.items() if u and n >= BULK_MIN}

    _in_threads(views, lambda v: store_view(v, url(v), fenced_window, started, stores, from_log=from_log), deadline)
    _in_threads(sorted(u for u in per_store if u and not is_match_time(u)), lambda u: stores.note(u, started), deadline)
    now = clock()
    # A summary behind its log could make a job look stalled or crash-looping: those are read again
    # from the log before they are flagged.
    doubtful = [v for v in views if v.from_summary and
                set(flag_job(v, now, idle_long=idle_long, default_interval=default_interval)) & set(CONFIRM_FROM_LOG)]
    if doubtful:
        _in_threads(doubtful, lambda v: store_view(v, url(v), fenced_window, started, stores, from_log=True), deadline)
        now = clock()
    for v in views:
        if not v.store_answered and not v.store_error:
            v.store_error = STORE_TIMEOUT
        v.flags = flag_job(v, now, idle_long=idle_long, default_interval=default_interval)
        v.store_note = stores.notes.get(url(v) or "")
    return views, now


def prometheus_text(views: List[JobView], now: float, stores: Dict[str, Dict[str, int]],
                    notes: Iterable[StoreNote] = ()) -> str:
    """The text exposition format, for the node exporter's textfile collector: per job its generation,
    seconds since its last commit, runs, lost runs, bytes of its newest commit and flags; per store its
    requests and bytes read by this status, whether it shares chunks and whether a gc pass runs.  Made
    with prometheus_client (the ``prometheus`` extra)."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import GaugeMetricFamily
    except ImportError:
        raise ConfigError("--format prometheus needs prometheus_client (pip install 'persistjob[prometheus]')") from None

    class Collector:
        def collect(self) -> Any:
            labels = ["job", "name", "global_job_id"]
            fams = {
                "generation": GaugeMetricFamily("persistjob_job_generation", "Newest committed generation", labels=labels),
                "age": GaugeMetricFamily("persistjob_job_last_commit_age_seconds", "Seconds since the newest commit",
                                         labels=labels),
                "runs": GaugeMetricFamily("persistjob_job_runs", "Runs claimed so far", labels=labels),
                "lost": GaugeMetricFamily("persistjob_job_lost_runs", "Runs that vanished without an end record",
                                          labels=labels),
                "bytes": GaugeMetricFamily("persistjob_job_bytes", "Bytes of the newest generation", labels=labels),
                "status": GaugeMetricFamily("persistjob_job_status", "The scheduler's JobStatus (HTCondor codes)",
                                            labels=labels),
            }
            flag = GaugeMetricFamily("persistjob_job_flag", "1 for each flag that needs a human", labels=labels + ["flag"])
            for v in views:
                lab = [_label(v.ad), str(v.ad.get(C.ATTR_NAME) or ""), str(v.ad.get("GlobalJobId") or "")]
                if v.generation is not None:
                    fams["generation"].add_metric(lab, v.generation)
                when = v.last_commit or _float(v.ad.get(C.ATTR_LAST_COMMIT))
                if when:
                    fams["age"].add_metric(lab, max(0.0, now - when))
                if v.runs is not None:
                    fams["runs"].add_metric(lab, v.runs)
                    fams["lost"].add_metric(lab, v.lost)
                if v.bytes is not None:
                    fams["bytes"].add_metric(lab, v.bytes)
                if isinstance(v.ad.get("JobStatus"), int):
                    fams["status"].add_metric(lab, v.ad["JobStatus"])
                for f in v.flags:
                    flag.add_metric(lab + [f], 1)
            yield from fams.values()
            yield flag
            req = GaugeMetricFamily("persistjob_store_requests", "Store requests made by this status, by kind",
                                    labels=["store", "kind"])
            read = GaugeMetricFamily("persistjob_store_bytes_read", "Bytes this status read from the store",
                                     labels=["store"])
            for url, t in sorted(stores.items()):
                for kind, n in sorted(t.items()):
                    if kind != "bytes_read":
                        req.add_metric([url, kind], n)
                read.add_metric([url], t.get("bytes_read", 0))
            yield req
            yield read
            shared = GaugeMetricFamily("persistjob_store_shared_chunks", "1 when the store keeps chunks once for all "
                                       "its jobs (dedup=store)", labels=["store"])
            gc = GaugeMetricFamily("persistjob_store_gc_running", "1 while a store-wide gc pass holds its lease "
                                   "(commits wait)", labels=["store"])
            for note in sorted(notes):
                shared.add_metric([note.url], int(note.shared))
                if note.shared:
                    gc.add_metric([note.url], int(note.gc_since is not None))
            yield shared
            yield gc

    registry = CollectorRegistry()
    registry.register(Collector())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def stats_line(views: List[JobView], stores: Dict[str, Dict[str, int]], seconds: float) -> str:
    """``--stats``: the cost of this view, on stderr."""
    kinds: Dict[str, int] = {}
    for t in stores.values():
        for k, n in t.items():
            if k != "bytes_read":
                kinds[k] = kinds.get(k, 0) + n
    total = sum(kinds.values())
    read = sum(t.get("bytes_read", 0) for t in stores.values())
    return ("status: %d jobs, %d store requests (%.1f per job: %s), %d bytes read, %.2fs"
            % (len(views), total, total / max(1, len(views)),
               ", ".join("%s %d" % kv for kv in sorted(kinds.items())) or "none", read, seconds))
