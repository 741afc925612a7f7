"""The ``persistjob`` command: a thin layer over the library.

Every expected failure prints one line ``persistjob: error: ...`` and exits
with the code of its error class (78 for bad input, 75 for try-later);
``PERSISTJOB_DEBUG=1`` adds tracebacks for unexpected ones.
"""

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__
from . import contract as X
from .errors import ConfigError, PersistJobError
from .identity import check_job_id, format_bytes, format_utc, parse_duration
from .options import add_run_options, format_duration, given, run_argv, run_options


class _Parser(argparse.ArgumentParser):
    """argparse, with the rules of this CLI: no abbreviated options (a prefix such as ``--max-run``
    is an unknown option, never silently another one), an unknown option is named before a missing
    one, and every usage error is one line and exit 78."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> "None":  # type: ignore[override]
        raise ConfigError("%s: %s (see %s --help)" % (self.prog, message, self.prog))

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        required = [a for a in self._actions if a.required and a.option_strings]
        for a in required:
            a.required = False
        try:
            ns, extras = super().parse_known_args(args, namespace)
        finally:
            for a in required:
                a.required = True
        unknown = [x for x in extras if x.startswith("-")]
        if unknown:
            self.error("unrecognized arguments: %s" % " ".join(unknown))
        missing = [a.option_strings[0] for a in required if getattr(ns, a.dest, None) is None]
        if missing:
            self.error("the following arguments are required: %s" % ", ".join(missing))
        return ns, extras


_duration = parse_duration


# ------------------------------------------------------------------ commands


def cmd_run(a: argparse.Namespace) -> int:
    from .wrapper import Wrapper

    return Wrapper(run_options(a, a.payload)).run()


def cmd_local(a: argparse.Namespace) -> int:
    from .local import run_local
    from .storage import get_backend
    from .worker.payload import resolve_payload

    opts = run_options(a, a.payload, job_id="local#x")  # validate everything before the first run
    resolve_payload(opts.payload[0])
    get_backend(opts.store).close()
    if a.max_runs < 1:
        raise ConfigError("--max-runs must be at least 1")
    name = a.name or os.path.basename(a.payload[0])
    check_job_id("local#" + name)
    return run_local(run_argv(given(a, skip=("job_id", "checkpoint_dir"))), a.payload, name=name,
                     max_runs=a.max_runs, checkpoint_dir=os.path.abspath(a.checkpoint_dir) if a.checkpoint_dir else None,
                     retry_delay=a.retry_delay)


def _demo_payload() -> List[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    for base in (os.getcwd(), os.path.dirname(here)):
        path = os.path.join(base, "examples", "counter", "counter.py")
        if os.path.isfile(path):
            return [sys.executable, path]
    raise ConfigError("examples/counter/counter.py not found: run the demo from the persistjob source tree")


def cmd_demo(a: argparse.Namespace) -> int:
    from .local import run_local

    from .options import format_duration

    store = a.store or "file://" + os.path.abspath(".persistjob-demo/store")
    payload = _demo_payload()
    print("demo: a counting payload as a persistent job: %d runs of %s each, checkpoint every %s, store %s"
          % (a.runs, format_duration(a.lifetime), format_duration(a.interval), store), file=sys.stderr)
    return run_local(run_argv(dict(store=store, lifetime=a.lifetime, interval=a.interval, vacate_grace=10.0)),
                     payload, name=a.name, max_runs=a.runs)


def _store(a: argparse.Namespace) -> Any:
    """The ``--store`` URL's backend, retried within ``--storage-timeout``."""
    from .storage import RetryingBackend, get_backend

    return RetryingBackend(get_backend(a.store), a.storage_timeout)


def _repo(a: argparse.Namespace) -> Any:
    from .repo import JobRepo

    return JobRepo(_store(a), check_job_id(a.job_id))


def cmd_ls(a: argparse.Namespace) -> int:
    repo = _repo(a)
    head = repo.head()
    retained = {m for _, m in head.retained}
    rows = repo.generations()
    if a.json:
        print(json.dumps({"job_id": a.job_id, "key": repo.key, "runs": head.run, "generation": head.generation,
                          "last_record": head.kind, "generations": [
                              dict(generation=r.generation, manifest=r.manifest, run=r.run, time=r.data.get("time"),
                                   files=r.data.get("files"), bytes=r.data.get("bytes"), uploaded=r.data.get("uploaded"),
                                   retained=r.manifest in retained) for r in rows]}, indent=1))
        return 0
    print("job %s (key %s): %d runs, newest generation %d, last record: %s" % (a.job_id, repo.key[:12], head.run,
                                                                             head.generation, head.kind))
    if not rows:
        print("no generations committed")
        return 0
    print("%5s  %-19s  %4s  %6s  %10s  %10s  %-12s  %s" % ("GEN", "TIME (UTC)", "RUN", "FILES", "SIZE", "UPLOADED",
                                                             "MANIFEST", "RETAINED"))
    for r in rows:
        print("%5d  %-19s  %4s  %6s  %10s  %10s  %-12s  %s" % (
            r.generation, format_utc(r.data.get("time")), r.run, r.data.get("files", "-"),
            format_bytes(r.data.get("bytes", 0)), format_bytes(r.data.get("uploaded", 0)), (r.manifest or "")[:12],
            "yes" if r.manifest in retained else "no"))
    return 0


def cmd_history(a: argparse.Namespace) -> int:
    from . import history as H

    repo = _repo(a)
    runs = sorted(repo.runs(), key=lambda r: r.get("run", 0))
    if a.json:
        print(json.dumps(runs, indent=1, default=str))
    elif not runs:
        print("job %s: no runs recorded" % a.job_id)
    else:
        print(H.table(runs, time.time()))
    if a.plot:
        commits = [dict(r.data, generation=r.generation) for r in repo.generations()]
        H.plot(runs, commits, a.plot, "persistjob job %s" % a.job_id, time.time())
        print("plot: %s" % a.plot, file=sys.stderr)
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from .errors import IntegrityError

    repo = _repo(a)
    gen, mid = repo.pick(a.generation)
    try:
        entries, meta = repo.manifest(mid)
    except IntegrityError as exc:
        raise ConfigError("manifest %s of generation %d cannot be read (garbage-collected or damaged): %s"
                          % (mid[:12], gen, exc)) from None
    if a.json:
        print(json.dumps({"generation": gen, "manifest": mid, "meta": meta, "entries": [e.to_json() for e in entries]}, indent=1))
        return 0
    print("generation %d, manifest %s, created %s" % (gen, mid, format_utc(meta.get("created"))))
    for e in entries:
        extra = (" -> " + e.target) if e.type == "l" else ("  %d chunks" % len(e.chunks) if e.type == "f" else "")
        print("%s %04o %12d  %s%s" % (e.type, e.mode, e.size, e.path, extra))
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    results = _repo(a).verify(a.generation)
    if not results:
        print("job %s has no committed generation" % a.job_id)
        return 0
    for gen, error, stats in results:
        if error:
            print("generation %d: DAMAGED: %s" % (gen, error))
        else:
            print("generation %d: ok (%d files, %d chunks, %d bytes stored)" % (gen, stats.files, stats.chunks_new,
                                                                             stats.transferred))
    return 1 if any(error for _, error, _ in results) else 0


def cmd_restore(a: argparse.Namespace) -> int:
    repo = _repo(a)
    dest = os.path.abspath(a.dest)
    if os.path.exists(dest) and os.listdir(dest) and not a.force:
        raise ConfigError("destination %s is not empty (use --force to replace its content)" % dest)
    ws = repo.workspace(dest)
    try:
        restored = repo.restore(ws, a.generation, fallback=not a.no_fallback)
    finally:
        ws.close()
    if restored.generation == 0:
        raise ConfigError("job %s has no committed generation" % a.job_id)
    for f in restored.fallbacks:
        print("generation %d is damaged (%s); fell back to the previous generation" % (f["generation"], f["error"]))
    print("restored generation %d into %s (%d files, %d bytes)" % (restored.generation, dest, restored.stats.files,
                                                                   restored.stats.bytes))
    return 0


def cmd_gc(a: argparse.Namespace) -> int:
    repo = _repo(a)
    head = repo.head()
    if not head.retained:
        print("job %s has no committed generation; nothing to collect" % a.job_id)
        return 0
    stats = repo.gc(a.grace, head.retained)
    print("deleted %d manifests and %d chunks (%d bytes); kept generations %s" % (
        stats["manifests"], stats["chunks"], stats["bytes"], ", ".join(str(g) for g, _ in head.retained)))
    return 0


def cmd_store_init(a: argparse.Namespace) -> int:
    from .repo import shared

    store = _store(a)
    if a.window <= 0 or a.lease <= 0:
        raise ConfigError("--window and --lease must be longer than 0s")
    cfg = shared.store_config(store, shared.StoreConfig(True, a.window, a.lease))
    if not cfg.dedup:
        raise ConfigError("the store already says dedup=job")
    print("store %s keeps chunks once for all its jobs (window %s, lease %s)"
          % (store.url, format_duration(cfg.window), format_duration(cfg.lease)))
    return 0


def cmd_store_gc(a: argparse.Namespace) -> int:
    from .repo import JobRepo, shared

    store = _store(a)
    say = (lambda s: None) if a.json else (lambda s: print(s, file=sys.stderr))
    stats = shared.store_gc(store, a.grace, lambda job_id: JobRepo(store, job_id).live_chunks(), say=say)
    if a.json:
        print(json.dumps(stats, sort_keys=True))
    else:
        print("gc: %d jobs, %d chunks referenced, %d kept, %d deleted (%s)" % (
            stats["jobs"], stats["referenced"], stats["kept"], stats["deleted"], format_bytes(stats["bytes"])))
    return 0


def cmd_bundle(a: argparse.Namespace) -> int:
    from .bundle import build, describe

    print(describe(build(a.output)))
    return 0


# ------------------------------------------------------------------ HTCondor


def _bundle() -> str:
    from .bundle import cached

    return cached()


def _shipment(a: argparse.Namespace) -> Any:
    from .credentials import check_getenv, grid_proxy, shipment

    check_getenv(a.getenv, os.environ)
    ship = shipment(a.store, a.credentials, a.no_credentials)
    if a.grid and not any(k == "x509userproxy" for k, _ in ship.commands):  # the CE needs one, whatever the store
        ship = ship._replace(commands=ship.commands + (("x509userproxy", grid_proxy(os.environ)),))
    return ship


def _grid_env(a: argparse.Namespace) -> List[Tuple[str, str]]:
    """In the grid universe getenv does not reach the CE: the named variables go as values."""
    return _env_values(a.getenv) if a.grid else []


def _env_values(getenv: Sequence[str]) -> List[Tuple[str, str]]:
    """The submitter's variables that --getenv patterns name, as (name, value) (checked for secrets)."""
    import fnmatch

    pats = [p.strip() for g in getenv for p in g.split(",") if p.strip()]
    return sorted((k, v) for k, v in os.environ.items() if any(fnmatch.fnmatchcase(k, p) for p in pats))


def cmd_submit(a: argparse.Namespace) -> int:
    from . import submit as S

    o = S.SubmitOptions(
        store=a.store, payload=tuple(a.payload), count=a.count, forever=not a.until_done, name=a.name,
        wrapper=a.wrapper, bundle=a.bundle or ("persistjob.pyz" if a.wrapper else _bundle()),
        transfer_payload=not a.no_transfer_payload, release_limit=a.release_limit, release_base=a.release_base,
        retry_base=a.retry_base, cron=a.cron, cron_window=None if a.cron_window is None else int(a.cron_window),
        cron_prep_time=None if a.cron_prep_time is None else int(a.cron_prep_time),
        transfer_input=tuple(a.transfer_input), output_dir=a.output_dir, extra=S.split_extra(a.append),
        getenv=tuple(a.getenv), initialdir=a.initialdir, shipment=_shipment(a), grid=a.grid, grid_env=_grid_env(a),
        **given(a, skip=("store", "job_id")),
    )
    if a.scheduler == "slurm":
        return _submit_slurm(a, o)
    for flag, given_ in (("--partition", a.partition), ("--account", a.account), ("--time-limit", a.time_limit)):
        if given_ is not None:
            raise ConfigError("%s is for Slurm (--scheduler slurm)" % flag)
    desc = S.build_description(o)
    if a.dry_run:
        sys.stdout.write(S.format_description(desc, o.count))
        return 0
    from .schedd import Scheduler

    cluster = Scheduler(a.schedd, a.pool).submit(desc, o.count)
    print("%d persistent job(s) submitted to cluster %d" % (o.count, cluster))
    if not a.quiet:
        import logging

        logging.getLogger("persistjob").info("submit: %s", S.describe_for_humans(o))
    return 0


def _submit_slurm(a: argparse.Namespace, o: Any) -> int:
    from . import slurm

    for flag, given_ in (("--grid", a.grid), ("--cron", a.cron), ("--wrapper", a.wrapper), ("--schedd", a.schedd),
                         ("--pool", a.pool), ("--append", a.append), ("--transfer-input", a.transfer_input)):
        if given_:
            raise ConfigError("%s is for HTCondor; it does not apply with --scheduler slurm" % flag)
    exports = list(_env_values(a.getenv)) + _shared_paths(o.shipment)
    script, jid = slurm.submit(o, bundle=o.bundle, exports=exports, partition=a.partition, account=a.account,
                               time_limit=a.time_limit, dry_run=a.dry_run)
    if a.dry_run:
        sys.stdout.write(script)
        return 0
    print("%d persistent job(s) submitted to Slurm as job %s%s" % (o.count, jid, "" if o.count == 1 else " (array)"))
    return 0


def _shared_paths(ship: Any) -> List[Tuple[str, str]]:
    """Slurm jobs read the shipped files where submit left them (a filesystem shared with the nodes):
    a variable naming a shipped file by its base name names it by its absolute path."""
    where = {os.path.basename(f): os.path.abspath(f) for f in ship.files}
    out = [(k, where.get(v, v)) for k, v in ship.environment]
    proxy = next((v for k, v in ship.commands if k == "x509userproxy"), None)
    if proxy:
        out.append(("X509_USER_PROXY", os.path.abspath(proxy)))
    return out


def _scheduler(a: argparse.Namespace) -> Any:
    if a.scheduler == "slurm":
        from .slurm import SlurmQueue

        if a.schedd or a.pool:
            raise ConfigError("--schedd/--pool are for HTCondor; they do not apply with --scheduler slurm")
        return SlurmQueue()
    from .schedd import Scheduler

    return Scheduler(a.schedd, a.pool)


def cmd_status(a: argparse.Namespace) -> int:
    from . import constants as C
    from . import status as S

    stores = S.StoreCache(max(1.0, a.timeout * 0.75))
    t0 = time.monotonic()
    views, now = S.collect_status(_scheduler(a), a.constraint, a.store, idle_long=a.idle_long,
                                  default_interval=C.DEFAULT_INTERVAL, fenced_window=a.fenced_window, timeout=a.timeout,
                                  stores=stores, from_log=a.from_log)
    if a.stats:
        print(S.stats_line(views, stores.totals(), time.monotonic() - t0), file=sys.stderr)
    if a.format == "prometheus":
        sys.stdout.write(S.prometheus_text(views, now, stores.totals(), stores.notes.values()))
    elif a.json or a.format == "json":
        print(json.dumps([v.as_json() for v in views], indent=1, default=str))
    elif not views:
        print("no persistent jobs%s" % (" match %s" % a.constraint if a.constraint else ""))
    else:
        print(S.status_table(views, now))
        for note in sorted(stores.notes.values()):
            if note.shared:  # a per-job store, the usual kind, adds no line
                print(note.line())
    return 1 if any(v.flags for v in views) else 0


def cmd_rm(a: argparse.Namespace) -> int:
    from . import constants as C
    from .repo import JobRepo
    from .schedd import SchedulerError, jobspec_constraint
    from .status import StoreCache

    sched = _scheduler(a)
    ads = sched.persistent_jobs(a.jobspec if a.scheduler == "slurm" else jobspec_constraint(a.jobspec),
                                ["ClusterId", "ProcId", "GlobalJobId", C.ATTR_STORE])
    if not ads:
        raise ConfigError("no persistent job matches %s" % a.jobspec)
    n = sched.remove_jobs(ads)
    print("removed %d persistent job(s)" % n)
    # Wait for the removed jobs to leave the queue: a running wrapper takes a final checkpoint first.
    end = time.monotonic() + a.wait
    while sched.still_queued(ads) and time.monotonic() < end:
        time.sleep(1)
    left = sched.still_queued(ads)
    if left:
        raise SchedulerError("%d removed job(s) still in the queue after %.0fs; their stores are left as they are"
                             % (len(left), a.wait))
    # Then a removal record in each job's log: an instance the scheduler lost track of (an orphan of a
    # grid job, a partitioned worker) stops at its next commit or lease check.
    stores = StoreCache(60.0)
    for ad in ads:
        label = ad.get("JobLabel") or "%s.%s" % (ad["ClusterId"], ad["ProcId"])
        store = a.store or ad.get(C.ATTR_STORE)
        if not store or "$$(" in str(store):
            print("%s: no store URL known; give --store to stop stray instances%s" % (label, " and to purge" if a.purge else ""))
            continue
        repo = JobRepo(stores.get(store), ad["GlobalJobId"])
        repo.retire("persistjob rm")
        if a.purge:
            print("%s: purged %d stored objects" % (label, repo.purge()))
    return 0


# ------------------------------------------------------------------ Work Queue


def _wq_work_dir(a: argparse.Namespace) -> str:
    from .wq.manager.table import default_work_dir

    return os.path.abspath(a.work_dir or default_work_dir())


def cmd_wq_manager(a: argparse.Namespace) -> int:
    from .wq.manager import Manager, ManagerOptions
    from .wq.shims.install import install_shims

    wd = _wq_work_dir(a)
    install_shims(wd)
    o = ManagerOptions(port=a.port, name=a.name, work_dir=wd, job_wrapper=a.job_wrapper, catalog_host=a.catalog_host,
                       catalog_port=a.catalog_port, project_name=a.project_name, max_jobs=a.max_jobs,
                       max_retries=a.max_retries, persistjob_cmd=a.persistjob_cmd or "", pass_env=tuple(a.pass_env or ["AWS_*"]),
                       retry_delay=a.retry_delay, release_base=a.release_base, release_limit=a.release_limit)
    return Manager(o).run()


def cmd_wq_submit(a: argparse.Namespace) -> int:
    import getpass

    from .wq.manager import submit_persistent

    if a.count < 1:
        raise ConfigError("--count must be at least 1")
    run_options(a, a.payload, job_id="wq#x")  # validates the run options
    run_args = run_argv(given(a, skip=("job_id",)))
    cluster = submit_persistent(_wq_work_dir(a), a.count, a.name, tuple(run_args), tuple(a.payload), getpass.getuser())
    print("%d persistent task(s) submitted to cluster %d (job IDs wq#%s#0..%d)" % (a.count, cluster, a.name, a.count - 1))
    return 0


def cmd_wq_env(a: argparse.Namespace) -> int:
    from .wq.shims.install import env_lines, install_shims

    wd = _wq_work_dir(a)
    install_shims(wd)
    sys.stdout.write(env_lines(wd))
    return 0


def cmd_wq_workers(a: argparse.Namespace) -> int:
    from .wq.workers import main as workers_main

    return workers_main(a.action, a)


# ------------------------------------------------------------------ parser


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The command line.  With ``only`` (a command word the line is known to hold), the other commands
    are left out: their parsers cost more start-up time than a short command takes (``persistjob
    submit`` is measured against ``condor_submit``); the top-level usage names COMMAND, not the list,
    so usage and errors read the same."""
    p = _Parser(prog="persistjob", description="Persistent jobs on batch and grid schedulers.")
    p.add_argument("--version", action="version", version="persistjob " + __version__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (kwargs, fill) in _COMMANDS.items():
        if only is None or only == name:
            fill(sub.add_parser(name, **kwargs))
    return p


def _command_of(opts: Sequence[str]) -> Optional[str]:
    """The command word of a command line (the top-level options take no values)."""
    for word in opts:
        if not word.startswith("-"):
            return word if word in _COMMANDS else None
    return None


def _fill_run(r: argparse.ArgumentParser) -> None:
    add_run_options(r)
    r.add_argument("payload", nargs="*", help="-- PAYLOAD ARGS...")
    r.set_defaults(func=cmd_run)


def _fill_local(lo: argparse.ArgumentParser) -> None:
    add_run_options(lo, skip=("job_id",))
    lo.add_argument("--max-runs", type=int, required=True)
    lo.add_argument("--name", help="job name (default: payload's base name)")
    lo.add_argument("--retry-delay", type=_duration, default=X.LOCAL_RETRY_BASE,
                    help="first delay after 'try later' (75), doubling (default 1s)")
    lo.add_argument("payload", nargs="*")
    lo.set_defaults(func=cmd_local)


def _fill_demo(d: argparse.ArgumentParser) -> None:
    d.add_argument("--store", default=None, help="default: file://$PWD/.persistjob-demo/store")
    d.add_argument("--runs", type=int, default=3)
    d.add_argument("--lifetime", type=_duration, default=4.0)
    d.add_argument("--interval", type=_duration, default=1.5)
    d.add_argument("--name", default="demo")
    d.set_defaults(func=cmd_demo)


def _scheduler_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", choices=("htcondor", "slurm"), default="htcondor",
                   help="the batch system that keeps the jobs (default htcondor)")


def _fill_submit(su: argparse.ArgumentParser) -> None:
    add_run_options(su, skip=("job_id",), match_time=("store", "lifetime", "interval", "checkpoint_dir"))
    su.add_argument("--count", type=int, default=1)
    su.add_argument("--grid", metavar="'arc URL'", help="submit to an ARC CE through HTCondor-G (grid universe), "
                    "e.g. 'arc https://ce.example.org:443/arex/rest/1.0'; needs an X.509 proxy")
    fo = su.add_mutually_exclusive_group()
    fo.add_argument("--forever", action="store_true", default=True, help="re-run forever (default)")
    fo.add_argument("--until-done", action="store_true", help="remove the job when the payload finishes (exit 0)")
    su.add_argument("--name", default="persistjob")
    su.add_argument("--wrapper", metavar="PATH", help="persistjob as installed on the worker nodes, instead of "
                    "sending the bundle with each job (the default: the site needs only python3)")
    su.add_argument("--bundle", metavar="FILE", help="the bundle to send (default: built from this installation "
                    "once per version, kept in ~/.cache/persistjob/bundles)")
    su.add_argument("--no-transfer-payload", action="store_true",
                    help="run the payload path as it is on the worker, even if it is a file here")
    su.add_argument("--release-limit", type=int, default=X.DEFAULT_RELEASE_LIMIT,
                    help="crash-loop holds released automatically (default %d)" % X.DEFAULT_RELEASE_LIMIT)
    su.add_argument("--release-base", type=_duration, default=X.DEFAULT_RELEASE_BASE,
                    help="first crash-loop release delay, doubling (default 1m)")
    su.add_argument("--retry-base", type=_duration, default=X.DEFAULT_RETRY_BASE,
                    help="first delay after 'try later' (75), doubling up to 30m (default 30s)")
    su.add_argument("--cron", metavar="'MIN HOUR DOM MON DOW'", help="run on this schedule (cron_* commands)")
    su.add_argument("--cron-window", type=_duration)
    su.add_argument("--cron-prep-time", type=_duration)
    su.add_argument("--transfer-input", action="append", default=[], metavar="PATH")
    su.add_argument("--getenv", action="append", default=[], metavar="PATTERN",
                    help="pass these submitter variables to the job, e.g. AWS_ENDPOINT_URL_S3 (HTCondor getenv); "
                    "patterns that would carry a secret are refused")
    cr = su.add_mutually_exclusive_group()
    cr.add_argument("--credentials", metavar="FILE", help="send this 0600 file as the store's credentials (default: "
                    "the submitter's, resolved as boto3 does, for s3://; the X.509 proxy and bearer token for grid stores)")
    cr.add_argument("--no-credentials", action="store_true", help="send none: the site provides them")
    su.add_argument("--initialdir", help="the job's working directory on the submit side (HTCondor initialdir); "
                    "needed with a remote schedd")
    su.add_argument("--output-dir", default=".", help="where .out/.err/.log files go (default .)")
    su.add_argument("--append", action="append", default=[], metavar="KEY=VALUE", help="extra submit command")
    su.add_argument("--dry-run", action="store_true", help="print the submit description (Slurm: batch script) instead")
    _scheduler_option(su)
    su.add_argument("--partition", help="Slurm partition (--scheduler slurm)")
    su.add_argument("--account", help="Slurm account (--scheduler slurm)")
    su.add_argument("--time-limit", type=_duration, help="Slurm --time (default: lifetime + vacate grace + 2m); "
                    "a shorter one ends each run early, with a final checkpoint, at Slurm's warning signal")
    su.add_argument("--schedd")
    su.add_argument("--pool")
    su.add_argument("payload", nargs="*")
    su.set_defaults(func=cmd_submit)


def _fill_status(st: argparse.ArgumentParser) -> None:
    st.add_argument("--json", action="store_true", help="the same as --format json")
    st.add_argument("--format", choices=("table", "json", "prometheus"), default="table",
                    help="prometheus: the text exposition format, for the node exporter's textfile collector")
    st.add_argument("--stats", action="store_true", help="print the store requests and time this view cost (stderr)")
    st.add_argument("--from-log", action="store_true",
                    help="read every job's log (5 requests per job) instead of listing all jobs' summaries at once")
    st.add_argument("--constraint")
    st.add_argument("--store", help="override the job ads' PersistStore")
    st.add_argument("--idle-long", type=_duration, default=3600.0)
    st.add_argument("--fenced-window", type=_duration, default=86400.0)
    st.add_argument("--timeout", type=_duration, default=20.0,
                    help="answer within this time whatever the stores do: jobs whose store did not answer are STORE?")
    _scheduler_option(st)
    st.add_argument("--schedd")
    st.add_argument("--pool")
    st.set_defaults(func=cmd_status)


def _fill_rm(rm: argparse.ArgumentParser) -> None:
    rm.add_argument("jobspec", help="CLUSTER, CLUSTER.PROC or a constraint")
    rm.add_argument("--purge", action="store_true")
    rm.add_argument("--store", help="override the job ads' PersistStore")
    rm.add_argument("--wait", type=_duration, default=300.0, help="how long to wait for removed jobs to leave")
    _scheduler_option(rm)
    rm.add_argument("--schedd")
    rm.add_argument("--pool")
    rm.set_defaults(func=cmd_rm)


def _fill_wq(wq: argparse.ArgumentParser) -> None:
    wqs = wq.add_subparsers(dest="wq_command", metavar="ACTION", parser_class=_Parser)
    wqs.required = True
    m = wqs.add_parser("manager", help="run the Work Queue manager")
    m.add_argument("--port", type=int, default=9094)
    m.add_argument("--name", help="manager name reported to the catalog (needs --catalog-host)")
    m.add_argument("--work-dir", help="default $AWQ_WORKDIR or /tmp/awq")
    m.add_argument("--job-wrapper", metavar="PATH", help="pilots run as ./wrapper.sh ./agent ARGS")
    m.add_argument("--catalog-host", help="report to this catalog server (never to CCTools' public default)")
    m.add_argument("--catalog-port", type=int, default=9097)
    m.add_argument("--project-name", default="alien_jobs")
    m.add_argument("--max-jobs", type=int, default=10000)
    m.add_argument("--max-retries", type=int, default=3, help="Work Queue failures retried per job (0: none)")
    m.add_argument("--persistjob-cmd", help="how workers run an installed persistjob (default: python3 with the "
                   "bundle, sent to each worker once as a cached input file)")
    m.add_argument("--pass-env", action="append", metavar="PATTERN", help="manager variables given to persistent tasks (default AWS_*)")
    m.add_argument("--retry-delay", type=_duration, default=X.DEFAULT_RETRY_BASE,
                   help="first delay after 'try later' (75), doubling up to 30m (default 30s)")
    m.add_argument("--release-base", type=_duration, default=X.DEFAULT_RELEASE_BASE,
                   help="first crash-loop release delay, doubling (default 1m)")
    m.add_argument("--release-limit", type=int, default=X.DEFAULT_RELEASE_LIMIT)
    m.set_defaults(func=cmd_wq_manager)
    ws = wqs.add_parser("submit", help="submit persistent tasks to the manager's table")
    add_run_options(ws, skip=("job_id",))
    ws.add_argument("--count", type=int, default=1)
    ws.add_argument("--name", default="persistjob", help="job IDs are wq#NAME#0..N-1 (deterministic)")
    ws.add_argument("--work-dir")
    ws.add_argument("payload", nargs="*")
    ws.set_defaults(func=cmd_wq_submit)
    we = wqs.add_parser("env", help="print the shell lines that put the condor_* shims first on PATH")
    we.add_argument("--work-dir")
    we.set_defaults(func=cmd_wq_env)
    ww = wqs.add_parser("workers", help="start/stop Work Queue foremen and workers (WQ_* variables)")
    ww.add_argument("action", choices=("start-foremen", "start-workers", "stop-foremen", "stop-workers", "stop",
                                       "count", "drain", "supervise"))
    ww.add_argument("--via", choices=("local", "condor"), default="local")
    ww.add_argument("--count", type=int)
    ww.add_argument("--index", default="0", help=argparse.SUPPRESS)
    ww.add_argument("--role", default="worker", help=argparse.SUPPRESS)
    ww.set_defaults(func=cmd_wq_workers)


def _fill_checkpoint(ck: argparse.ArgumentParser) -> None:
    cks = ck.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    cks.required = True

    def job_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", required=True, metavar="URL")
        sp.add_argument("--job-id", required=True)
        sp.add_argument("--storage-timeout", type=_duration, default=60.0)

    x = cks.add_parser("ls", help="list generations with sizes and times")
    job_args(x)
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=cmd_ls)
    x = cks.add_parser("show", help="show a generation's manifest")
    job_args(x)
    x.add_argument("--generation", type=int)
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=cmd_show)
    x = cks.add_parser("verify", help="verify every chunk of the retained generations (exit 1 if damaged)")
    job_args(x)
    x.add_argument("--generation", type=int)
    x.set_defaults(func=cmd_verify)
    x = cks.add_parser("restore", help="restore a generation into a directory")
    job_args(x)
    x.add_argument("--generation", type=int)
    x.add_argument("--dest", required=True)
    x.add_argument("--force", action="store_true")
    x.add_argument("--no-fallback", action="store_true",
                   help="refuse a damaged generation instead of falling back to the previous one")
    x.set_defaults(func=cmd_restore)
    x = cks.add_parser("gc", help="delete what no retained generation references")
    job_args(x)
    x.add_argument("--grace", type=_duration, default=3600.0)
    x.set_defaults(func=cmd_gc)


def _fill_history(h: argparse.ArgumentParser) -> None:
    h.add_argument("--store", required=True, metavar="URL")
    h.add_argument("--job-id", required=True)
    h.add_argument("--storage-timeout", type=_duration, default=60.0)
    h.add_argument("--json", action="store_true", help="the run records as stored")
    h.add_argument("--plot", metavar="FILE.png", help="draw runs and commits on a time line (needs matplotlib)")
    h.set_defaults(func=cmd_history)


def _fill_store(sp: argparse.ArgumentParser) -> None:
    sub = sp.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    sub.required = True
    x = sub.add_parser("init", help="make a new store keep chunks once for all its jobs (as ?dedup=store does)")
    x.add_argument("--store", required=True, metavar="URL")
    x.add_argument("--window", type=_duration, default=300.0,
                   help="a commit publishes within half of it; a gc pass waits it before reading jobs (default 5m)")
    x.add_argument("--lease", type=_duration, default=600.0,
                   help="a gc pass renews its lease within this; a lease older is dead (default 10m)")
    x.add_argument("--storage-timeout", type=_duration, default=60.0)
    x.set_defaults(func=cmd_store_init)
    x = sub.add_parser("gc", help="delete shared chunks that no job's retained generations reference",
                       description="One store-wide gc pass over a ?dedup=store store. Exit 75 when another pass "
                                   "holds the store.")
    x.add_argument("--store", required=True, metavar="URL")
    x.add_argument("--grace", type=_duration, default=3600.0,
                   help="spare unreferenced chunks younger than this (default 1h)")
    x.add_argument("--storage-timeout", type=_duration, default=60.0)
    x.add_argument("--json", action="store_true", help="the pass's counts as one JSON object")
    x.set_defaults(func=cmd_store_gc)


def _fill_bundle(b: argparse.ArgumentParser) -> None:
    b.add_argument("--output", "-o", default="persistjob.pyz", help="where to write it (default ./persistjob.pyz)")
    b.set_defaults(func=cmd_bundle)


_COMMANDS: Dict[str, Tuple[Dict[str, Any], Callable[[argparse.ArgumentParser], None]]] = {
    "run": (dict(help="the worker-node wrapper", description="Run one lifetime of a persistent job."), _fill_run),
    "local": (dict(help="re-run a job locally as a scheduler would",
                   description="The embedded scheduler: re-runs 'persistjob run' with job ID local#NAME."),
              _fill_local),
    "demo": (dict(help="run the counting demo job locally"), _fill_demo),
    "submit": (dict(help="submit persistent jobs to HTCondor",
                    description="Submit N persistent jobs through htcondor2 (or print the description)."),
               _fill_submit),
    "status": (dict(help="persistent jobs: the schedd's view joined with the store's",
                    description="Exit 1 when any job needs a human (STALLED, CRASHLOOP, HELD, FENCED, IDLE-LONG)."),
               _fill_status),
    "rm": (dict(help="remove persistent jobs (and with --purge their stored checkpoints)"), _fill_rm),
    "wq": (dict(help="the Work Queue executor: manager, Condor shims, workers"), _fill_wq),
    "checkpoint": (dict(help="inspect and manage stored checkpoints"), _fill_checkpoint),
    "history": (dict(help="a job's runs: where, how long, how each ended, bytes moved",
                     description="The job's runs from its run records in the store."), _fill_history),
    "store": (dict(help="a store shared by jobs: init (?dedup=store) and the store-wide gc"), _fill_store),
    "bundle": (dict(help="build the one-file worker side (a zipapp) that travels with jobs",
                    description="Build persistjob.pyz: runs as 'python3 persistjob.pyz run ...' with the site's "
                                "Python 3.9+ and nothing installed."), _fill_bundle),
}


def _split_payload(argv: List[str]) -> Tuple[List[str], Optional[List[str]]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, None


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    import logging  # here: `submit -q` logs nothing and need not load it (8 ms of its start-up)

    class _Formatter(logging.Formatter):
        def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s persistjob[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("gfal2").setLevel(logging.ERROR)  # e.g. Davix looking for an X509 proxy on plain http


#: What a shell reports for a command ended by SIGPIPE (128 + 13), as for `yes | head -1`.
EXIT_BROKEN_PIPE = 141


def entry() -> None:
    """The console script.  ``submit`` ends without the interpreter's teardown: its work is done when
    the schedd has answered, and unloading the HTCondor bindings' modules took 9 ms of its 70 ms
    start-up and exit (measured in the sandbox pool; ``condor_submit`` is the yardstick)."""
    rc = main()
    try:
        opts, _ = _split_payload(sys.argv[1:])
        quick = _command_of(opts) == "submit"
    except Exception:  # main has said what was wrong with the line
        quick = False
    if quick:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # the reader went away before the last bytes: a normal end, as in main
            os._exit(EXIT_BROKEN_PIPE)
        if "logging" in sys.modules:
            sys.modules["logging"].shutdown()
        os._exit(rc)
    sys.exit(rc)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # boto3 warns on every import under Python 3.9; a job's error file should tell the job's story.
    warnings.filterwarnings("ignore", message="Boto3 will no longer support")
    try:
        opts, payload = _split_payload(argv)
        a = build_parser(_command_of(opts)).parse_args(opts)
        if a.command in ("run", "local", "submit") or (a.command == "wq" and a.wq_command == "submit"):
            if payload is None:
                payload = list(a.payload)
            elif a.payload:
                raise ConfigError("unexpected arguments before --: %s" % " ".join(a.payload))
            a.payload = payload
            if not payload:
                raise ConfigError("no payload given (persistjob %s --store URL ... -- PAYLOAD ARGS...)" % a.command)
        elif payload is not None:
            raise ConfigError("'--' is only for run, local and submit")
        if not (a.command == "submit" and a.quiet and not a.verbose):  # nothing on its path logs a warning
            setup_logging(a.verbose, a.quiet)
        return int(a.func(a))
    except PersistJobError as exc:
        print("persistjob: error: %s" % exc.message, file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("persistjob: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`persistjob checkpoint ls | head -1`): a normal end
        try:  # the interpreter's last flush of stdout must not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: one line, traceback on request
        if os.environ.get("PERSISTJOB_DEBUG"):
            raise
        print("persistjob: internal error: %s: %s (set PERSISTJOB_DEBUG=1 for a traceback)" % (type(exc).__name__, exc),
              file=sys.stderr, flush=True)
        return X.EXIT_PAYLOAD_FAILED
