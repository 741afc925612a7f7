"""HTCondor's submit description language, expanded by HTCondor's own code.

The description is cut at its queue statements and each part handed to the htcondor bindings'
``Submit`` (HTCondor's submit hash): ``$(...)`` with defaults, ``$F[pdnxqa]()``, ``$INT()``,
``$REAL()``, ``$RANDOM_CHOICE()``, ``$CHOICE()``, ``MY.``/``+`` attributes usable in later macros,
``queue N``, ``queue ... in/from/matching`` item data, ``$$()`` left for match time.  htcondor2's
``Submit.jobs()`` is not implemented (it raises), so this module turns the expanded commands into
the fields of the job table; only what a Work Queue site can honour becomes part of a job, the rest
of HTCondor's commands are accepted, and a line HTCondor would not use is warned about in
HTCondor's words.  Errors are HTCondor's own texts.
"""

import os
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ...quoting import classad_string

UNIVERSES = {"vanilla", "standard", "scheduler", "local", "grid", "java", "vm", "parallel", "docker", "container"}


class SubmitError(Exception):
    """The text after 'ERROR: ' (may span lines); ``parsing`` errors are printed after a blank line,
    as condor_submit prints errors found while it reads the file."""

    def __init__(self, text: str, parsing: bool = False) -> None:
        super().__init__(text)
        self.parsing = parsing


def split_args(text: str) -> List[str]:
    """``arguments``: new syntax (double-quoted, '' groups) or old (whitespace-split)."""
    t = text.strip()
    if not t:
        return []
    if not t.startswith('"'):
        return t.split()
    if len(t) < 2 or not t.endswith('"'):
        raise SubmitError("Unterminated double-quote.\nThe arguments you specified were: '%s'" % text)
    body = t[1:-1].replace('""', '"')
    out: List[str] = []
    cur: List[str] = []
    have = False
    i = 0
    while i < len(body):
        c = body[i]
        if c == "'":
            have = True
            i += 1
            while True:
                if i >= len(body):
                    raise SubmitError("Unbalanced single-quote.\nThe arguments you specified were: '%s'" % text)
                if body[i] == "'":
                    if i + 1 < len(body) and body[i + 1] == "'":
                        cur.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                cur.append(body[i])
                i += 1
            continue
        if c.isspace():
            if cur or have:
                out.append("".join(cur))
                cur, have = [], False
        else:
            cur.append(c)
        i += 1
    if cur or have:
        out.append("".join(cur))
    return out


def parse_environment(text: str) -> Dict[str, str]:
    """``environment``: new syntax ``"A=1 B='x y'"`` or old ``A=1;B=2``."""
    t = text.strip()
    if not t:
        return {}
    env: Dict[str, str] = {}
    if t.startswith('"'):
        if len(t) < 2 or not t.endswith('"'):
            raise SubmitError("Unterminated double-quote.\nThe environment you specified was: '%s'" % text)
        try:
            words = split_args(t)
        except SubmitError:
            raise SubmitError("Unbalanced single-quote.\nThe environment you specified was: '%s'" % text) from None
        for w in words:
            k, sep, v = w.partition("=")
            if not sep or not k:
                raise SubmitError("Environment entry is missing '=': '%s'.\nThe environment you specified was: '%s'"
                                  % (w, text))
            env[k] = v
        return env
    for item in t.split(";"):
        item = item.strip()
        if not item:
            continue
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SubmitError("Environment entry is missing '=': '%s'.\nThe environment you specified was: '%s'"
                              % (item, text))
        env[k.strip()] = v
    return env


# Submit commands HTCondor 23.9 knows (lower case): a line setting anything else, that no other line uses,
# gets condor_submit's "unused" warning.  Built-in macros (ClusterId, ProcId, ...) are never warned about.
KNOWN_COMMANDS = frozenset("""
universe executable cmd arguments args environment env getenv input output error log log_xml initialdir iwd
requirements rank request_cpus request_memory request_disk request_gpus requestcpus requestmemory requestdisk
requestgpus transfer_executable transfer_input_files transfer_output_files should_transfer_files
when_to_transfer_output transfer_output_remaps transfer_input transfer_output transfer_error stream_output
stream_error stream_input notification notify_user email_attributes periodic_hold periodic_remove
periodic_release periodic_hold_reason periodic_hold_subcode periodic_vacate on_exit_hold on_exit_remove
on_exit_hold_reason on_exit_hold_subcode max_retries retry_until success_exit_code job_max_vacate_time
max_idle max_materialize materialize_max_idle batch_name jobbatchname batch_id priority prio nice_user
accounting_group accounting_group_user grid_resource x509userproxy use_x509userproxy scitokens_file
use_oauth_services use_scitokens leave_in_queue hold job_lease_duration concurrency_limits
concurrency_limits_expr coresize copy_to_spool checkpoint_exit_code want_graceful_removal kill_sig
kill_sig_timeout hold_kill_sig remove_kill_sig docker_image docker_network_type container_image
container_target_dir transfer_container deferral_time deferral_window deferral_prep_time cron_minute
cron_hour cron_day_of_month cron_month cron_day_of_week cron_window cron_prep_time allowed_execute_duration
allowed_job_duration description job_machine_attrs job_machine_attrs_history_length submit_event_notes
load_profile run_as_owner encrypt_input_files encrypt_output_files dont_encrypt_input_files
dont_encrypt_output_files output_destination erase_output_and_error_on_restart want_remote_io buffer_size
buffer_block_size append_files max_job_retirement_time job_ad_information_attrs keep_claim_idle
next_job_start_delay image_size job_max_vacate_time max_transfer_input_mb max_transfer_output_mb
preserve_relative_paths skip_filechecks transfer_plugins want_io_proxy job_ad_information_attrs
match_list_length dagman_log manifest manifest_dir ulog_execute_attrs starter_debug want_checkpoint
transfer_checkpoint_files checkpoint_destination want_ft_on_checkpoint cuda_version gpus_minimum_capability
gpus_maximum_capability gpus_minimum_memory gpus_minimum_runtime require_gpus request_gpu_memory
machine_count cloud_label_names java_vm_args jar_files vm_type vm_memory vm_disk vm_networking
vm_checkpoint vm_no_output_vm delegate_job_gsi_credentials_lifetime mpi_standard_output
""".split())
BUILTIN = frozenset("clusterid cluster procid process step row item itemindex node".split())

_REFERENCE = re.compile(r"\$[A-Za-z_]*\(\s*([A-Za-z_][A-Za-z0-9_.]*)")
_QUEUE_LINE = re.compile(r"^\s*queue(\s|$)", re.I)
_ITEMS = re.compile(r"\b(in|from|matching)\b", re.I)


def _htcondor2() -> Any:
    try:
        import htcondor2
    except ImportError:  # pragma: no cover - declared dependency of the wq extra
        raise SubmitError("this condor_submit needs the htcondor bindings: pip install htcondor") from None
    return htcondor2


def _statements(text: str) -> Iterator[Tuple[str, int]]:
    """(the description up to and including one queue statement, that statement's line number)."""
    lines = text.splitlines()
    body: List[str] = []
    i, continued = 0, False
    while i < len(lines):
        line = lines[i]
        i += 1
        if continued or not _QUEUE_LINE.match(line):
            continued = line.rstrip().endswith("\\")
            body.append(line)
            continue
        number = i
        statement = [line]
        if re.search(r"\b(in|from)\s*\(\s*$", line, re.I):  # item list on the following lines, up to ')'
            while i < len(lines):
                statement.append(lines[i])
                i += 1
                if lines[i - 1].strip().startswith(")"):
                    break
        yield "\n".join(body + statement) + "\n", number


def _syntax_error_line(text: str) -> int:
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#") and "=" not in s and not _QUEUE_LINE.match(s) and \
                not re.match(r"^(if|elif|else|endif|include|error|warning)\b", s, re.I):
            return n
    return 1


def _memory_mb(value: str, unit_mb: float) -> str:
    """request_memory / request_disk with HTCondor's units (bare numbers are MiB / KiB)."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT])?B?\s*$", value, re.I)
    if not m:
        return value
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    n = float(m.group(1)) * (scale[m.group(2).upper()] / unit_mb if m.group(2) else 1)
    return str(int(-(-n // 1)))


class SubmitDescription:
    """A parsed description: ``procs(cluster)`` gives the jobs of the cluster it becomes."""

    def __init__(self, text: str, cwd: str, owner: str) -> None:
        self.cwd, self.owner = cwd, owner
        self.warnings: List[str] = []
        self._queues: List[Tuple[Any, List[str], int, List[Dict[str, str]]]] = []
        htcondor2 = _htcondor2()
        last_line = max(1, len(text.splitlines()))
        for part, line in _statements(text):
            try:
                sub = htcondor2.Submit(part)
            except (ValueError, RuntimeError):
                n = _syntax_error_line(part)
                raise SubmitError("on Line %d of submit file: \n\nERROR: Failed to parse command file (line %d)."
                                  % (n, n), parsing=True) from None
            # (iterating, not keys(): htcondor2 23.9's Submit.keys() recurses through __len__ without end)
            keys = [k for k in sub if k]
            qargs = sub.getQArgs()
            items: List[Dict[str, str]] = [{}]
            if _ITEMS.search(qargs):
                items = self._items(sub, qargs, line)
            self._queues.append((sub, keys, self._count(sub, qargs, line), items))
        if not self._queues:
            raise SubmitError("on Line %d of submit file: no queue statement\n\nERROR: Failed to parse command file "
                              "(line %d)." % (last_line, last_line), parsing=True)
        self.count = sum(n * len(items) for _, _, n, items in self._queues)
        self._warn_unused()
        self.procs(0)  # every error now, before a cluster is taken

    @staticmethod
    def _items(sub: Any, qargs: str, line: int) -> List[Dict[str, str]]:
        """The queue statement's item data, one dict of variables per item."""
        def fail(why: str) -> SubmitError:
            return SubmitError("on Line %d of submit file: %s\n\nERROR: Failed to parse command file (line %d)."
                               % (line, why, line), parsing=True)

        m = re.match(r"^\s*(?:(?:\d+|\S*\$\(\S*)\s+)?(.*?)\s*\b(in|from|matching)\b\s*(.*)$", qargs, re.I | re.S)
        names = [n for n in re.split(r"[,\s]+", m.group(1)) if n] if m else []
        source = m.group(3).strip() if m else ""
        if m and m.group(2).lower() == "from" and source and not source.startswith("("):
            # checked here: htcondor2 23.9's itemdata() crashes the process on a file it cannot open
            if not os.path.isfile(source):
                raise fail("can't open file %s: No such file or directory" % source)
        try:
            raw = list(sub.itemdata() or [])
        except (ValueError, RuntimeError, OSError) as exc:
            raise fail(str(exc)) from None
        out = []
        for x in raw:
            if isinstance(x, dict):  # htcondor2 24 and later split the variables
                out.append(dict(x))
                continue
            keys = names or ["Item"]  # 23.9 gives each item's text: split it as condor_submit does
            values = re.split(r"[,\s]+", x.strip(), maxsplit=len(keys) - 1) if len(keys) > 1 else [x]
            out.append(dict(zip(keys, values + [""] * (len(keys) - len(values)))))
        return out

    @staticmethod
    def _count(sub: Any, qargs: str, line: int) -> int:
        first = (qargs.split() or ["1"])[0]
        if _ITEMS.fullmatch(first) or re.match(r"^[A-Za-z_][\w,]*$", first):
            return 1
        if "$" in first:
            sub["PersistjobQueueCount"] = first
            first = sub.expand("PersistjobQueueCount")
            sub["PersistjobQueueCount"] = ""  # (keys cannot be deleted; the empty value has no effect)
        try:
            return int(first)
        except ValueError:
            raise SubmitError("on Line %d of submit file: invalid Queue statement\n\nERROR: Failed to parse command "
                              "file (line %d)." % (line, line), parsing=True) from None

    def _warn_unused(self) -> None:
        """condor_submit's warnings for lines and queue variables that nothing used."""
        raw: Dict[str, Tuple[str, str]] = {}
        used = set()
        item_vars: Dict[str, str] = {}
        for sub, keys, _, items in self._queues:
            values = {k.lower(): (k, sub[k]) for k in keys}
            raw.update(values)
            item_vars.update({v.lower(): v for item in items for v in item})
            todo = [k for k in values if k in KNOWN_COMMANDS or k.startswith("my.")]
            seen = set()
            while todo:
                k = todo.pop()
                if k not in seen:
                    seen.add(k)
                    todo.extend(r.lower() for r in _REFERENCE.findall(values[k][1] if k in values else ""))
            used |= seen
        for low, v in sorted(item_vars.items()):
            if low not in used and low != "item":
                self.warnings.append("WARNING: the Queue variable '%s' was unused by condor_submit. Is it a typo?" % v)
        for k, (name, value) in raw.items():
            if k not in used and k not in BUILTIN and k not in item_vars:
                self.warnings.append("WARNING: the line '%s = %s' was unused by condor_submit. Is it a typo?"
                                     % (name, value))

    def procs(self, cluster: int) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        for sub, keys, count, items in self._queues:
            for row, item in enumerate(items):
                for step in range(count):
                    proc = len(out)
                    fixed = {"ClusterId": cluster, "Cluster": cluster, "ProcId": proc, "Process": proc,
                             "Step": step, "Row": row, "ItemIndex": row}
                    for k, v in list(fixed.items()) + list(item.items()):
                        sub[k] = str(v)
                    out.append(self._job(sub, keys))
        return out

    def _job(self, sub: Any, keys: List[str]) -> Dict[str, Any]:
        g: Dict[str, str] = {}
        custom: Dict[str, str] = {}
        for k in keys:
            low = k.lower()
            if not (low in KNOWN_COMMANDS or low.startswith("my.")):
                continue
            try:
                value = sub.expand(k)
            except (KeyError, ValueError, RuntimeError):
                raise SubmitError("Failed to expand the value of '%s': %s" % (k, sub[k])) from None
            if low.startswith("my."):
                custom[k[3:]] = value
            else:
                g[low] = value.strip()
        return _job_fields(g, custom, self.cwd, self.owner)


def _job_fields(g: Dict[str, str], custom: Dict[str, str], cwd: str, owner: str) -> Dict[str, Any]:
    """The job table's fields for one proc, from its expanded commands."""
    universe = g.get("universe", "vanilla").lower() or "vanilla"
    if universe not in UNIVERSES:
        raise SubmitError("I don't know about the '%s' universe." % g.get("universe"))
    exe = g.get("executable") or g.get("cmd")
    if not exe:
        raise SubmitError("No 'executable' parameter was provided")
    iwd = g.get("initialdir") or g.get("iwd") or cwd
    if not os.path.isabs(iwd):
        iwd = os.path.join(cwd, iwd)

    def path(key: str) -> Optional[str]:
        v = g.get(key)
        if not v:
            return None
        return v if os.path.isabs(v) else os.path.join(iwd, v)

    env = parse_environment(g.get("environment") or g.get("env") or "")
    args = split_args(g.get("arguments") or g.get("args") or "")
    exe_path = exe if os.path.isabs(exe) else os.path.join(iwd, exe)
    if g.get("transfer_executable", "true").lower() not in ("false", "no") and not os.path.exists(exe_path):
        raise SubmitError("Executable file %s does not exist" % exe_path)
    attrs = dict(custom)
    for key, attr in (("periodic_hold", "PeriodicHold"), ("periodic_remove", "PeriodicRemove"),
                      ("periodic_release", "PeriodicRelease"), ("requirements", "Requirements")):
        if key in g:
            attrs[attr] = g[key]
    for keys, attr, unit in ((("request_cpus", "requestcpus"), "RequestCpus", 0),
                             (("request_memory", "requestmemory"), "RequestMemory", 1),
                             (("request_disk", "requestdisk"), "RequestDisk", 1 / 1024)):
        value = next((g[k] for k in keys if g.get(k)), None)
        if value is not None:
            attrs[attr] = _memory_mb(value, unit) if unit else value
    if g.get("batch_name") or g.get("jobbatchname"):
        attrs["JobBatchName"] = classad_string(g.get("batch_name") or g["jobbatchname"])
    for key, attr in (("stream_output", "StreamOut"), ("stream_error", "StreamErr")):
        if key in g:
            if g[key].lower() not in ("true", "false", "yes", "no", "t", "f"):
                raise SubmitError("%s = %s: expected true or false" % (key, g[key]))
            attrs[attr] = "true" if g[key].lower() in ("true", "yes", "t") else "false"
    if universe == "grid" and "grid_resource" in g:
        attrs["GridResource"] = classad_string(g["grid_resource"])
    if g.get("use_x509userproxy", "").lower() in ("true", "yes"):
        attrs.setdefault("x509userproxy", classad_string(os.environ.get("X509_USER_PROXY", "/tmp/x509up_u%d" % os.getuid())))
    return {"kind": "pilot", "owner": owner, "cmd": exe_path, "args": args, "env": env, "iwd": iwd,
            "output": path("output"), "error": path("error"), "log": path("log"), "attrs": attrs}


def parse_submit(text: str, cwd: str, owner: str) -> SubmitDescription:
    """Parse and check a description (raises SubmitError with HTCondor's text)."""
    return SubmitDescription(text, cwd, owner)
