"""``condor_submit``, ``condor_q``, ``condor_rm``, ``condor_status`` for a Work Queue site.

They answer from the manager's durable job table, never with placeholders,
and print what HTCondor 23.9 prints for the command lines AliEn's and
JAliEn's Condor backends run (docs/workqueue.md lists them):
the same spacing, blank lines, error texts and exit codes.  Constraints and
``-af`` expressions are evaluated with the real ClassAd library (``classad2``).
"""

import getpass
import json
import os
import re
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

from ...quoting import classad_string
from ..manager import userlog
from ..manager.table import COMPLETED, HELD, IDLE, REMOVED, RUNNING, JobTable, default_work_dir
from .ads import iter_ads
from .submitfile import SubmitError, finalize, parse_submit

HEARTBEAT_MAX_AGE = 60.0


# ---------------------------------------------------------------- classads


def _classad2() -> Any:
    try:
        import classad2
    except ImportError:  # pragma: no cover - declared dependency of the wq extra
        sys.stderr.write("ERROR: these condor_* commands need the ClassAd library: pip install htcondor\n")
        raise SystemExit(1)
    return classad2


def to_classad(ad: Dict[str, Any]) -> Any:
    c2 = _classad2()
    out = c2.ClassAd()
    for k, v in ad.items():
        if k == "_custom":
            for ck, cv in v.items():
                try:
                    out[ck] = c2.ExprTree(cv)
                except Exception:
                    out[ck] = cv
        elif v is not None:
            out[k] = v
    return out


def evaluate(expr: str, ad: Any) -> Any:
    c2 = _classad2()
    return c2.ExprTree(expr).eval(ad)


def is_true(expr: Optional[str], ad: Any) -> bool:
    if not expr:
        return True
    v = evaluate(expr, ad)
    return v is True or (isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0)


def af_text(v: Any) -> str:
    """A value as -af prints it: strings raw, undefined as 'undefined'."""
    c2 = _classad2()
    if v is c2.Value.Undefined:
        return "undefined"
    if v is c2.Value.Error:
        return "error"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (int, str)):
        return str(v)
    return str(v)


def unparsed(v: Any) -> str:
    """A value as a ClassAd literal (strings quoted), for %V and -long."""
    if isinstance(v, str):
        return classad_string(v)
    return af_text(v)


def c_escapes(fmt: str) -> str:
    return fmt.replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\")


_CONV = re.compile(r"%([-+ #0]*\d*(?:\.\d+)?)([diouxXeEfFgGsvV%])")


def printf(fmt: str, v: Any) -> str:
    """One -format: C-style conversion of one attribute's value."""
    c2 = _classad2()
    undefined = v is c2.Value.Undefined or v is c2.Value.Error

    def conv(m: "re.Match[str]") -> str:
        flags, kind = m.group(1), m.group(2)
        if kind == "%":
            return "%"
        if kind in "vV":
            return unparsed(v) if kind == "V" else af_text(v)
        if kind in "diouxX":
            try:
                n = int(v) if not isinstance(v, str) else int(float(v))
            except (TypeError, ValueError):
                n = 0
            return ("%" + flags + ("d" if kind in "iu" else kind)) % n
        if kind in "eEfFgG":
            try:
                x = float(v)
            except (TypeError, ValueError):
                x = 0.0
            return ("%" + flags + kind) % x
        return ("%" + flags + "s") % af_text(v)

    if undefined:
        return ""
    return _CONV.sub(conv, c_escapes(fmt))


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


def _address(info: Optional[Dict[str, Any]]) -> str:
    port = info.get("port", 9094) if info else 9094
    return "<127.0.0.1:%s?...>" % port


def _schedd_line(info: Optional[Dict[str, Any]]) -> str:
    return "-- Schedd: %s : %s @ %s" % (socket.gethostname().split(".")[0], _address(info),
                                        time.strftime("%m/%d/%y %H:%M:%S"))


def _backend_down(out: TextIO, info: Optional[Dict[str, Any]]) -> int:
    out.write("\n-- Failed to fetch ads from: %s : %s\nCEDAR:6001:Failed to connect to %s\n"
              % (_address(info), socket.gethostname().split(".")[0], _address(info)))
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
    a: Dict[str, Any] = {"constraints": [], "formats": [], "af": None, "af_mods": "", "totals": False, "long": False,
                         "json": False, "attributes": None, "owners": [], "ids": []}
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        low = arg.lower()
        if low in ("-constraint", "-const", "-cons"):
            if i + 1 >= len(argv):
                raise ValueError("-constraint requires another argument")
            a["constraints"].append(argv[i + 1])
            i += 2
        elif low in ("-format", "-f"):
            if i + 2 >= len(argv):
                raise ValueError("-format requires format and attribute parameters")
            a["formats"].append((argv[i + 1], argv[i + 2]))
            i += 3
        elif low.startswith("-af") or low.startswith("-autoformat"):
            mods = arg.split(":", 1)[1] if ":" in arg else ""
            attrs = []
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                attrs.append(argv[i])
                i += 1
            if not attrs:
                raise ValueError("-autoformat requires at last one attribute")
            a["af"] = (a["af"] or []) + attrs
            a["af_mods"] = mods
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
        return _backend_down(out, info)
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
    if a["formats"]:
        for ad, c in chosen:
            out.write("".join(printf(fmt, evaluate(attr, c)) for fmt, attr in a["formats"]))
        return 0
    if a["af"]:
        _autoformat(out, a["af"], a["af_mods"], [c for _, c in chosen])
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
    out.write("\n\n%s\n" % _schedd_line(info))
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
    c2 = _classad2()
    if v is c2.Value.Undefined or v is c2.Value.Error:
        return None
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _autoformat(out: TextIO, attrs: List[str], mods: str, cads: List[Any]) -> None:
    sep = "\t" if "t" in mods else ", " if "," in mods else " "
    rows = []
    for c in cads:
        vals = [af_text(evaluate(x, c)) for x in attrs]
        if "j" in mods:
            vals.insert(0, "%s.%s" % (af_text(evaluate("ClusterId", c)), af_text(evaluate("ProcId", c))))
        rows.append(vals)
    heads = (["ID"] if "j" in mods else []) + list(attrs)
    if "h" in mods:
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads)]
        out.write(sep.join(h.ljust(w) for h, w in zip(heads, widths)).rstrip() + "\n")
        for r in rows:
            out.write(sep.join(v.ljust(w) for v, w in zip(r, widths)) + "\n")
        return
    for r in rows:
        if "n" in mods:
            out.write("\n".join(r) + "\n")
        else:
            out.write(sep.join(r) + "\n")


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
    if not terse:
        out.write("Submitting job(s)")
        out.flush()
    owner = getpass.getuser()
    try:
        procs = parse_submit(text, os.getcwd(), owner)
    except SubmitError as exc:
        out.flush()
        err.write("ERROR: %s\n" % exc)
        return 1
    if not procs:
        out.write("\n")
        err.write("ERROR: no queue statement in the submit file\n")
        return 1
    table = _open_table()
    if table is None or manager_info(table.work_dir if table else work_dir()) is None:
        if table is not None:
            table.close()
        out.write("\n")
        err.write("ERROR: Can't find address of local schedd\n")
        return 1
    info = manager_info(table.work_dir) or {}
    try:
        jobs: List[Dict[str, Any]] = []

        def make(c: int) -> List[Dict[str, Any]]:
            jobs[:] = finalize(procs, c)
            return jobs

        cluster = table.submit(make)
    finally:
        table.close()
    for proc, j in enumerate(jobs):
        if j.get("log"):
            userlog.submitted(j["log"], cluster, proc, int(info.get("port", 9094)))
    if terse:
        out.write("%d.0 - %d.%d\n" % (cluster, cluster, len(procs) - 1))
    else:
        out.write("." * len(procs) + "\n%d job(s) submitted to cluster %d.\n" % (len(procs), cluster))
    return 0


# ---------------------------------------------------------------- condor_rm


def condor_rm(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    if not argv:
        err.write("Usage: condor_rm [options] [constraints]\n")
        return 1
    table = _open_table()
    if table is None or manager_info(table.work_dir) is None:
        if table is not None:
            table.close()
        err.write("Can't find address for schedd\n")
        return 1
    rc = 0
    try:
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg in ("-all", "-a"):
                table.remove()
                out.write("All jobs marked for removal.\n")
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


def schedd_ad(table: JobTable, info: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    ads = list(iter_ads(table.queue()))
    count = lambda s: sum(1 for a in ads if a["JobStatus"] == s)  # noqa: E731
    host = socket.gethostname().split(".")[0]
    return {"_custom": {}, "MyType": "Scheduler", "Name": host, "MyAddress": _address(info),
            "TotalRunningJobs": count(RUNNING), "TotalIdleJobs": count(IDLE), "TotalHeldJobs": count(HELD),
            "TotalJobAds": len(ads), "TotalRemovedJobs": count(REMOVED),
            "WorkQueuePort": (info or {}).get("port"), "WorkQueueWorkers": (info or {}).get("workers", 0)}


def condor_status(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = list(argv)
    schedd = "-schedd" in [a.lower() for a in args]
    attrs: List[str] = []
    mods = ""
    constraint = None
    i = 0
    while i < len(args):
        a = args[i]
        low = a.lower()
        if low.startswith("-af") or low.startswith("-autoformat"):
            mods = a.split(":", 1)[1] if ":" in a else ""
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                attrs.append(args[i])
                i += 1
            continue
        if low in ("-constraint", "-const"):
            constraint = args[i + 1]
            i += 2
            continue
        i += 1
    wd = work_dir()
    info = manager_info(wd)
    table = _open_table()
    if info is None or table is None:
        err.write("Error: communication error\nCEDAR:6001:Failed to connect to %s\n" % _address(info))
        return 1
    try:
        # A Work Queue site has no startds: without -schedd the answer is that of a pool with no slots.
        ads = [schedd_ad(table, info)] if schedd else []
    finally:
        table.close()
    cads = [to_classad(a) for a in ads]
    cads = [c for c in cads if is_true(constraint, c)]
    if attrs:
        _autoformat(out, attrs, mods, cads)
        return 0
    if schedd:
        out.write("\nName%s Machine    RunningJobs   IdleJobs   HeldJobs\n\n" % (" " * 20))
        for sad in ads:
            out.write("%-24s %-10s %11d %10d %10d\n" % (sad["Name"], sad["Name"], sad["TotalRunningJobs"],
                                                       sad["TotalIdleJobs"], sad["TotalHeldJobs"]))
        out.write("\n%24s %11s %10s %10s\n\n" % ("", "RunningJobs", "IdleJobs", "HeldJobs"))
        out.write("%24s %11d %10d %10d\n" % ("Total", sum(x["TotalRunningJobs"] for x in ads),
                                            sum(x["TotalIdleJobs"] for x in ads), sum(x["TotalHeldJobs"] for x in ads)))
        return 0
    return 0


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

