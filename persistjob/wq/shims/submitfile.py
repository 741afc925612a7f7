"""HTCondor's submit description language, as much as pilot submitters use.

Enough for AliEn's ``CONDOR.pm`` (stdin, ``environment = K=V;K=V``) and
JAliEn's ``HTCONDOR`` (``cmd =``, ``environment = "K='v' K2='v2'"``,
``+Attr = value``, ``periodic_hold``...).  Errors are HTCondor's own texts.
"""

import os
import re
from typing import Any, Dict, List

from ...quoting import classad_string

UNIVERSES = {"vanilla", "standard", "scheduler", "local", "grid", "java", "vm", "parallel", "docker", "container"}


class SubmitError(Exception):
    """The text after 'ERROR: ' (may span lines)."""


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


_MACRO = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.]*)\)")


def _expand(value: str, macros: Dict[str, str], depth: int = 0) -> str:
    if depth > 20:
        return value

    def sub(m: "re.Match[str]") -> str:
        name = m.group(1).lower()
        return _expand(macros.get(name, ""), macros, depth + 1)

    return _MACRO.sub(sub, value)


def parse_submit(text: str, cwd: str, owner: str) -> List[Dict[str, Any]]:
    """One dict per proc to queue (``cluster`` macros are filled in later by the table)."""
    macros: Dict[str, str] = {}
    custom: Dict[str, str] = {}
    procs: List[Dict[str, Any]] = []
    lines = text.splitlines()
    joined: List[str] = []
    buf = ""
    for raw in lines:
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        joined.append(buf + raw)
        buf = ""
    if buf:
        joined.append(buf)
    for line in joined:
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"^queue\b\s*(\d*)\s*$", s, re.I)
        if m:
            n = int(m.group(1) or 1)
            for _ in range(n):
                procs.append(_proc(macros, custom, cwd, owner))
            continue
        if re.match(r"^queue\b", s, re.I):
            raise SubmitError("queue with item lists is not supported by this condor_submit")
        key, sep, value = s.partition("=")
        if not sep:
            raise SubmitError('on Line %d of submit file: \nsubmit: syntax error in submit file' % (joined.index(line) + 1))
        key, value = key.strip(), value.strip()
        if key.startswith("+") or key.upper().startswith("MY."):
            custom[key[1:] if key.startswith("+") else key[3:]] = value
        else:
            macros[key.lower()] = value
    return procs


def _proc(macros: Dict[str, str], custom: Dict[str, str], cwd: str, owner: str) -> Dict[str, Any]:
    """Validate what one queue statement queues; values keep $(Cluster)/$(Process) for later."""
    g = {k: v for k, v in macros.items()}
    universe = g.get("universe", "vanilla").strip().lower() or "vanilla"
    if universe not in UNIVERSES:
        raise SubmitError("I don't know about the '%s' universe." % g.get("universe"))
    exe = g.get("executable") or g.get("cmd")
    if not exe:
        raise SubmitError("No 'executable' parameter was provided")
    iwd = g.get("initialdir") or g.get("iwd") or cwd
    if not os.path.isabs(iwd):
        iwd = os.path.join(cwd, iwd)

    def path(key: str) -> Any:
        v = g.get(key)
        if v is None or v == "":
            return None
        return v if os.path.isabs(v) or v.startswith("$(") else os.path.join(iwd, v)

    env_text = g.get("environment") or g.get("env") or ""
    env = parse_environment(env_text)  # validates now, macros expanded at queue time
    args_text = g.get("arguments") or g.get("args") or ""
    split_args(args_text)
    exe_path = exe if os.path.isabs(exe) else os.path.join(iwd, exe)
    if g.get("transfer_executable", "true").lower() not in ("false", "no") and not os.path.exists(_expand(exe_path, g)):
        raise SubmitError("Executable file %s does not exist" % exe_path)
    attrs = dict(custom)
    for key, attr in (("periodic_hold", "PeriodicHold"), ("periodic_remove", "PeriodicRemove"),
                      ("periodic_release", "PeriodicRelease"), ("requirements", "Requirements")):
        if key in g:
            attrs[attr] = g[key]
    if universe == "grid" and "grid_resource" in g:
        attrs["GridResource"] = classad_string(g["grid_resource"])
    if g.get("use_x509userproxy", "").lower() in ("true", "yes"):
        attrs.setdefault("x509userproxy", '"%s"' % os.environ.get("X509_USER_PROXY", "/tmp/x509up_u%d" % os.getuid()))
    return {"cmd": exe_path, "args_text": args_text, "env": env, "iwd": iwd, "output": path("output"),
            "error": path("error"), "log": path("log"), "attrs": attrs, "owner": owner, "macros": g,
            "universe": universe}


def finalize(procs: List[Dict[str, Any]], cluster: int) -> List[Dict[str, Any]]:
    """Expand $(Cluster)/$(Process) in each proc's values."""
    out = []
    for i, p in enumerate(procs):
        macros = dict(p["macros"], cluster=str(cluster), clusterid=str(cluster), process=str(i), procid=str(i))

        def x(v: Any) -> Any:
            return _expand(v, macros) if isinstance(v, str) else v

        out.append({
            "kind": "pilot", "owner": p["owner"], "cmd": x(p["cmd"]), "args": split_args(x(p["args_text"])),
            "env": {k: x(v) for k, v in p["env"].items()}, "iwd": p["iwd"], "output": x(p["output"]),
            "error": x(p["error"]), "log": x(p["log"]), "attrs": {k: x(v) for k, v in p["attrs"].items()},
        })
    return out
