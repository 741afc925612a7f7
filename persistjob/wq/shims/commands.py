"""``condor_submit``, ``condor_q``, ``condor_rm``, ``condor_status`` for a Work Queue site.

They answer from the manager's durable job table, never with placeholders,
and print what HTCondor 23.9 prints for the command lines AliEn's, JAliEn's
and dask-jobqueue's HTCondor backends run (docs/workqueue.md lists them):
the same spacing, blank lines, error texts and exit codes, on the same
streams.  Constraints and ``-af`` expressions are evaluated with the real
ClassAd library (``classad2``), ``-format``/``-af`` by ``printmask``, the
submit language by HTCondor's own code (``submitfile``).
"""

import getpass
import json
import os
import re
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

from ..manager import userlog
from ..manager.table import COMPLETED, HELD, IDLE, REMOVED, RUNNING, JobTable, default_work_dir
from .ads import iter_ads
from .printmask import Item, classad2, evaluate, is_true, parse_output_option, render, to_classad, unparsed
from .submitfile import SubmitError, parse_submit

HEARTBEAT_MAX_AGE = 60.0


# ---------------------------------------------------------------- helpers


def work_dir() -> str:
    return default_work_dir()


def manager_info(wd: str) -> Optional[Dict[str, Any]]:
    """The running manager's heartbeat, or None when the backend is down."""
    try:
        with open(os.path.join(wd, "manager.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if time.time() - float(info.get("heartbeat", 0)) > HEARTBEAT_MAX_AGE:
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None
    return info


def _host() -> str:
    return socket.gethostname().split(".")[0]


def _address(wd: str, info: Optional[Dict[str, Any]]) -> str:
    """The manager's address as HTCondor writes a sinful string: the running manager's port, else the
    port the last manager of this work dir was configured with (``manager.address``)."""
    port = info.get("port") if info else None
    if port is None:
        try:
            with open(os.path.join(wd, "manager.address")) as f:
                port = f.read().strip().rpartition(":")[2]
        except OSError:
            return "<unknown: no manager has run with work dir %s>" % wd
    return "<127.0.0.1:%s?...>" % port


def _schedd_line(wd: str, info: Optional[Dict[str, Any]]) -> str:
    return "-- Schedd: %s : %s @ %s" % (_host(), _address(wd, info), time.strftime("%m/%d/%y %H:%M:%S"))


def _extra_info(wd: str) -> str:
    return ("Extra Info: persistjob's Work Queue manager %s (work dir %s) is not running or has not written "
            "its heartbeat for %d s; start it with: persistjob wq manager --work-dir %s\n"
            % (_address(wd, None), wd, int(HEARTBEAT_MAX_AGE), wd))


def _schedd_down(err: TextIO, wd: str) -> int:
    """condor_q when the schedd cannot be found: nothing on stdout, HTCondor's error on stderr, exit 1."""
    err.write("Error: Can't find address for schedd %s\n\n%s" % (_host(), _extra_info(wd)))
    return 1


def _open_table() -> Optional[JobTable]:
    try:
        return JobTable(work_dir(), create=False)
    except (FileNotFoundError, OSError):
        return None


def _totals(label: str, ads: Sequence[Dict[str, Any]], trailing: bool) -> str:
    n = {s: 0 for s in (IDLE, RUNNING, REMOVED, COMPLETED, HELD, 7)}
    for ad in ads:
        n[ad["JobStatus"]] = n.get(ad["JobStatus"], 0) + 1
    return ("Total for %s: %d jobs; %d completed, %d removed, %d idle, %d running, %d held, %d suspended%s"
            % (label, len(ads), n[COMPLETED], n[REMOVED], n[IDLE], n[RUNNING], n[HELD], n[7], " " if trailing else ""))


# ---------------------------------------------------------------- condor_q


def _parse_q(argv: Sequence[str]) -> Dict[str, Any]:
    a: Dict[str, Any] = {"constraints": [], "items": [], "af_mods": "", "totals": False, "long": False,
                         "json": False, "attributes": None, "owners": [], "ids": []}
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        low = arg.lower()
        nxt, mods = parse_output_option(argv, i, a["items"])
        if nxt != i:
            a["af_mods"] = a["af_mods"] if mods is None else mods
            i = nxt
        elif low in ("-constraint", "-const", "-cons"):
            if i + 1 >= len(argv):
                raise ValueError("-constraint requires another argument")
            a["constraints"].append(argv[i + 1])
            i += 2
        elif low in ("-totals", "-tot"):
            a["totals"] = True
            i += 1
        elif low in ("-long", "-l"):
            a["long"] = True
            i += 1
        elif low == "-json":
            a["json"] = True
            i += 1
        elif low in ("-attributes", "-attrs", "-attr"):
            a["attributes"] = [x.strip() for x in argv[i + 1].split(",") if x.strip()]
            i += 2
        elif low in ("-allusers", "-all", "-nobatch", "-batch", "-global", "-wide", "-run", "-idle", "-hold"):
            if low in ("-run", "-idle", "-hold"):
                a["constraints"].append({"-run": "JobStatus == 2", "-idle": "JobStatus == 1", "-hold": "JobStatus == 5"}[low])
            a["nobatch"] = a.get("nobatch") or low == "-nobatch"
            i += 1
        elif arg.startswith("-"):
            raise ValueError("unknown argument %s" % arg)
        elif re.match(r"^\d+(\.\d+)?$", arg):
            a["ids"].append(arg)
            i += 1
        else:
            a["owners"].append(arg)
            i += 1
    return a


def _selection(a: Dict[str, Any]) -> List[str]:
    c = list(a["constraints"])
    if a["ids"] or a["owners"]:
        alts = []
        for x in a["ids"]:
            if "." in x:
                cl, pr = x.split(".")
                alts.append("(ClusterId == %s && ProcId == %s)" % (cl, pr))
            else:
                alts.append("(ClusterId == %s)" % x)
        for o in a["owners"]:
            alts.append('(Owner == "%s")' % o.replace('"', ""))
        c.append(" || ".join(alts))
    return c


def condor_q(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        a = _parse_q(argv)
    except ValueError as exc:
        err.write("Error: %s\n" % exc)
        return 1
    wd = work_dir()
    info = manager_info(wd)
    table = _open_table()
    if info is None or table is None:
        if table is not None:
            table.close()
        return _schedd_down(err, wd)
    try:
        all_ads = list(iter_ads(table.queue()))
    finally:
        table.close()
    cads = [to_classad(ad) for ad in all_ads]
    constraints = _selection(a)
    try:
        chosen = [(ad, c) for ad, c in zip(all_ads, cads) if all(is_true(x, c) for x in constraints)]
    except Exception as exc:
        err.write("Error: Invalid constraint: %s\n" % exc)
        return 1
    if a["items"]:
        out.write(render(a["items"], a["af_mods"], [c for _, c in chosen]))
        return 0
    if a["long"]:
        for ad, c in chosen:
            for k in _attr_names(ad, a["attributes"]):
                out.write("%s = %s\n" % (k, _unparse_attr(c, k)))
            out.write("\n")
        return 0
    if a["json"]:
        objs = []
        for ad, c in chosen:
            objs.append(json.dumps({k: _json_value(c, k) for k in _attr_names(ad, a["attributes"])}, indent=2,
                                   sort_keys=True))
        out.write("[\n" + "\n,\n".join(objs) + ("\n" if objs else "") + "]\n")
        return 0
    out.write("\n\n%s\n" % _schedd_line(wd, info))
    ads_q = [ad for ad, _ in chosen]
    if not a["totals"]:
        if a.get("nobatch"):
            _nobatch(out, ads_q)
        else:
            _batch_table(out, ads_q, all_ads)
        out.write("\n")
    out.write(_totals("query", ads_q, True) + "\n")
    if not a["totals"]:
        me = getpass.getuser()
        out.write(_totals(me, [x for x in all_ads if x["Owner"] == me], True) + "\n")
    out.write(_totals("all users", all_ads, False) + "\n\n")
    return 0


def _attr_names(ad: Dict[str, Any], only: Optional[List[str]]) -> List[str]:
    names = [k for k in ad if k != "_custom"] + list(ad["_custom"])
    if only is not None:
        low = {n.lower(): n for n in names}
        names = [low[x.lower()] for x in only if x.lower() in low]
    return sorted(names)


def _unparse_attr(c: Any, k: str) -> str:
    try:
        expr = c.lookup(k)
        return str(expr)
    except Exception:
        return unparsed(evaluate(k, c))


def _json_value(c: Any, k: str) -> Any:
    v = evaluate(k, c)
    c2 = classad2()
    if v is c2.Value.Undefined or v is c2.Value.Error:
        return None
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


_HEADER = "OWNER    BATCH_NAME    SUBMITTED   DONE   RUN    IDLE   HOLD  TOTAL JOB_IDS"


def _batch_table(out: TextIO, ads: List[Dict[str, Any]], all_ads: List[Dict[str, Any]]) -> None:
    clusters: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}
    for ad in ads:
        clusters.setdefault((ad["Owner"], ad["ClusterId"]), []).append(ad)
    if not clusters:
        return
    out.write(_HEADER + "\n")
    for (owner, cluster), members in sorted(clusters.items(), key=lambda kv: kv[0][1]):
        n = {s: sum(1 for m in members if m["JobStatus"] == s) for s in (COMPLETED, RUNNING, IDLE, HELD)}
        procs = sorted(m["ProcId"] for m in members)
        ids = "%d.%d" % (cluster, procs[0]) + ("-%d" % procs[-1] if len(procs) > 1 else "")
        sub = time.strftime("%m/%d %H:%M", time.localtime(min(m["QDate"] for m in members)))
        cell = lambda k: str(n[k]) if n[k] else "_"  # noqa: E731
        out.write("%-8s %-11s %11s %6s %6s %6s %6s %6s %s\n" % (
            owner[:8], "ID: %d" % cluster, sub, cell(COMPLETED), cell(RUNNING), cell(IDLE), cell(HELD),
            len(members), ids))


_STATUS_LETTER = {1: "I", 2: "R", 3: "X", 4: "C", 5: "H", 7: "S"}


def _nobatch(out: TextIO, ads: List[Dict[str, Any]]) -> None:
    out.write(" ID        OWNER            SUBMITTED     RUN_TIME ST PRI SIZE CMD\n")
    for ad in ads:
        sub = time.strftime("%m/%d %H:%M", time.localtime(ad["QDate"]))
        out.write("%4d.%-3d   %-14s %11s  0+00:00:00 %s  0    0.0 %s\n" % (
            ad["ClusterId"], ad["ProcId"], ad["Owner"][:14], sub, _STATUS_LETTER.get(ad["JobStatus"], "?"),
            os.path.basename(ad["Cmd"]) + ((" " + ad["Args"]) if ad.get("Args") else "")))


# ---------------------------------------------------------------- condor_submit


def condor_submit(argv: Sequence[str], stdin: TextIO = sys.stdin, out: TextIO = sys.stdout,
                  err: TextIO = sys.stderr) -> int:
    files = [x for x in argv if not x.startswith("-") or x == "-"]
    opts = [x for x in argv if x.startswith("-") and x != "-"]
    terse = any(o.lower() in ("-terse",) for o in opts)
    if len(files) > 1:
        err.write("ERROR: Only one submit file may be given\n")
        return 1
    if files and files[0] != "-":
        try:
            with open(files[0]) as f:
                text = f.read()
        except OSError as exc:
            err.write("ERROR: Failed to open command file (%s)\n" % exc.strerror)
            return 1
    else:
        text = stdin.read()
    wd = work_dir()
    table = _open_table()
    info = manager_info(wd)
    if table is None or info is None:  # condor_submit looks for the schedd before it says anything
        if table is not None:
            table.close()
        err.write("\nERROR: Can't find address of local schedd\n%s" % _extra_info(wd))
        return 1
    try:
        if not terse:
            out.write("Submitting job(s)")
            out.flush()
        try:
            description = parse_submit(text, os.getcwd(), getpass.getuser())
        except SubmitError as exc:
            out.flush()
            err.write("%sERROR: %s\n" % ("\n" if exc.parsing else "", exc))
            return 1
        jobs: List[Dict[str, Any]] = []

        def make(c: int) -> List[Dict[str, Any]]:
            jobs[:] = description.procs(c)
            return jobs

        cluster = table.submit(make)
    finally:
        table.close()
    for proc, j in enumerate(jobs):
        if j.get("log"):
            userlog.submitted(j["log"], cluster, proc, int(info.get("port", 9094)))
    if terse:
        out.write("%d.0 - %d.%d\n" % (cluster, cluster, len(jobs) - 1))
    else:
        out.write("." * len(jobs) + "\n%d job(s) submitted to cluster %d.\n" % (len(jobs), cluster))
    out.flush()
    for line in description.warnings:
        err.write(line + "\n")
    return 0


# ---------------------------------------------------------------- condor_rm


def condor_rm(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    if not argv:
        err.write("Usage: condor_rm [options] [constraints]\n")
        return 1
    wd = work_dir()
    table = _open_table()
    if table is None or manager_info(wd) is None:
        if table is not None:
            table.close()
        err.write("condor_rm: Can't find address for schedd %s\n%s" % (_host(), _extra_info(wd)))
        return 1
    rc = 0
    try:
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg in ("-all", "-a"):
                table.remove()
                out.write("All jobs have been marked for removal\n")
                i += 1
                continue
            m = re.match(r"^(\d+)(?:\.(\d+))?$", arg)
            if arg in ("-constraint", "-const"):
                expr = argv[i + 1] if i + 1 < len(argv) else ""
                n = _remove_keys(table, _matching(table, expr))
                done = "Jobs matching constraint (%s) have been marked for removal" % expr
                failed = "Couldn't find/remove all jobs matching constraint (%s)" % expr
                i += 1
            elif m and m.group(2) is None:
                n = table.remove(cluster=int(m.group(1)))
                done = "All jobs in cluster %s have been marked for removal" % arg
                failed = "Couldn't find/remove all jobs in cluster %s" % arg
            elif m:
                n = table.remove(cluster=int(m.group(1)), proc=int(m.group(2)))
                done = "Job %s marked for removal" % arg
                failed = "Couldn't find/remove all jobs matching constraint (ClusterId == %s && ProcId == %s)" % m.groups()
            else:
                n = table.remove(owner=arg)
                done = 'All jobs of user "%s" have been marked for removal' % arg
                failed = "Couldn't find/remove all jobs of user %s" % arg
            if n:
                out.write(done + "\n")
            else:
                err.write("\n" + failed + "\n")
                rc = 1
            i += 1
    finally:
        table.close()
    return rc


def _matching(table: JobTable, expr: str) -> List[Tuple[int, int]]:
    keys = []
    for ad in iter_ads(table.queue()):
        if is_true(expr, to_classad(ad)):
            keys.append((ad["ClusterId"], ad["ProcId"]))
    return keys


def _remove_keys(table: JobTable, keys: List[Tuple[int, int]]) -> int:
    return sum(table.remove(cluster=c, proc=p) for c, p in keys)


# ---------------------------------------------------------------- condor_status


def schedd_ad(table: JobTable, wd: str, info: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    ads = list(iter_ads(table.queue()))
    count = lambda s: sum(1 for a in ads if a["JobStatus"] == s)  # noqa: E731
    return {"_custom": {}, "MyType": "Scheduler", "Name": _host(), "Machine": _host(), "MyAddress": _address(wd, info),
            "TotalRunningJobs": count(RUNNING), "TotalIdleJobs": count(IDLE), "TotalHeldJobs": count(HELD),
            "TotalJobAds": len(ads), "TotalRemovedJobs": count(REMOVED),
            "WorkQueuePort": (info or {}).get("port"), "WorkQueueWorkers": (info or {}).get("workers", 0)}


def condor_status(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``condor_status [-schedd] [-af ...|-format ...] [-constraint EXPR]``.

    A Work Queue site has no startds: without ``-schedd`` the answer is that of a pool with no slots.
    With the manager down the schedd's ad is missing, as in a pool whose collector answers while its
    schedd is off: nothing printed, exit 0.
    """
    args = list(argv)
    schedd = "-schedd" in [a.lower() for a in args]
    items: List[Item] = []
    mods = ""
    constraint = None
    i = 0
    while i < len(args):
        try:
            nxt, m = parse_output_option(args, i, items)
        except ValueError as exc:
            err.write("Error: %s\n" % exc)
            return 1
        if nxt != i:
            mods = mods if m is None else m
            i = nxt
        elif args[i].lower() in ("-constraint", "-const") and i + 1 < len(args):
            constraint = args[i + 1]
            i += 2
        else:
            i += 1
    wd = work_dir()
    info = manager_info(wd)
    table = _open_table() if schedd and info is not None else None
    try:
        ads = [schedd_ad(table, wd, info)] if table is not None else []
    finally:
        if table is not None:
            table.close()
    ads = [a for a in ads if is_true(constraint, to_classad(a))]
    if items:
        out.write(render(items, mods, [to_classad(a) for a in ads]))
    elif ads:
        _schedd_table(out, ads)
    return 0


def _schedd_table(out: TextIO, ads: List[Dict[str, Any]]) -> None:
    """condor_status -schedd's default table, spaced as HTCondor 23.9 spaces it."""
    wn = max([15] + [len(a["Name"]) for a in ads])
    wm = max([12] + [len(a["Machine"]) for a in ads])
    out.write("%-*s %-*s %11s %10s %10s\n\n" % (wn, "Name", wm, "Machine", "RunningJobs", "IdleJobs", "HeldJobs"))
    for a in ads:
        out.write("%-*s %-*s %11d %10d %10d\n" % (wn, a["Name"], wm, a["Machine"], a["TotalRunningJobs"],
                                                 a["TotalIdleJobs"], a["TotalHeldJobs"]))
    out.write("\n%14s%18s%19s%19s\n\n%14s\n" % ("", "TotalRunningJobs", "TotalIdleJobs", "TotalHeldJobs", ""))
    out.write("%14s%18d%19d%19d\n" % ("Total", sum(a["TotalRunningJobs"] for a in ads),
                                      sum(a["TotalIdleJobs"] for a in ads), sum(a["TotalHeldJobs"] for a in ads)))


SHIMS: Dict[str, Callable[..., int]] = {"condor_submit": condor_submit, "condor_q": condor_q, "condor_rm": condor_rm, "condor_status": condor_status}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    name = os.path.basename(argv[0]) if argv else ""
    if name not in SHIMS and len(argv) > 1:
        name, argv = argv[1], argv[1:]
    fn = SHIMS.get(name)
    if fn is None:
        sys.stderr.write("usage: python -m persistjob.wq.shims condor_submit|condor_q|condor_rm|condor_status ...\n")
        return 2
    try:
        return fn(argv[1:])
    except BrokenPipeError:
        return 0

