"""``persistjob bundle``: the worker side in one file that travels with the job.

The bundle is a zipapp (PEP 441): the ``persistjob`` package and the pure-Python packages the
worker side needs (boto3 and what it imports, tenacity), copied from this installation, with
botocore's service data cut down to S3.  It runs as ``python3 persistjob.pyz run ...`` with the
site's own Python (3.9 or newer) and nothing else installed, under ``-I -S`` too.  On first use it
unpacks itself into a cache directory (``$PERSISTJOB_BUNDLE_DIR``, else ``~/.cache/persistjob``,
else the job's working directory), because botocore reads its data and CA files from disk; later
runs on the same machine start from there.  Compiled packages never ride in it: zstandard is used
where the site has it, and checkpoints are portable without it (docs/bundle.md says why).
"""

import hashlib
import os
from typing import Dict, List, Optional, Tuple

from . import __version__
from .errors import ConfigError

#: The pure-Python modules the worker side imports (boto3's closure and tenacity), by import name:
#: found wherever this Python finds them (pip, venv or Debian packages alike).
WORKER_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3", "tenacity")
#: botocore's and boto3's service data kept: the one service the worker uses.
_SERVICES = ("s3",)
BUNDLE_NAME = "persistjob.pyz"
_BOOTSTRAP = "_bundle_main.py"


def _keep(rel: str) -> bool:
    """Whether a file of a module's tree goes into the bundle."""
    parts = rel.split("/")
    if "__pycache__" in parts or rel.endswith((".pyc", ".pyo")):
        return False
    if parts[0] in ("boto3", "botocore") and len(parts) > 2 and parts[1] == "data":
        return len(parts) == 3 or parts[2] in _SERVICES  # top-level data files, and S3's models
    return parts[:2] != ["boto3", "examples"]


def _module_files(name: str) -> List[Tuple[str, str]]:
    """(path inside the bundle, path on disk) of one importable module or package."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise ConfigError("cannot build the bundle: the module %s is not installed here (pip install %s)"
                          % (name, "python-dateutil" if name == "dateutil" else name))
    if not spec.submodule_search_locations:  # a single-file module
        return [(os.path.basename(spec.origin), spec.origin)]
    root = os.path.dirname(spec.origin)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            path = os.path.join(dirpath, fname)
            rel = name + "/" + os.path.relpath(path, root).replace(os.sep, "/")
            if not _keep(rel):
                continue
            if fname.endswith((".so", ".pyd", ".dylib")):
                raise ConfigError("cannot build the bundle: %s contains compiled code (%s)" % (name, rel))
            out.append((rel, path))
    return out


def _package_files() -> List[Tuple[str, str]]:
    """persistjob's own source files (whatever way it is installed: editable or not)."""
    root = os.path.dirname(os.path.abspath(__file__))
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py") and name != _BOOTSTRAP:
                path = os.path.join(dirpath, name)
                out.append(("persistjob/" + os.path.relpath(path, root).replace(os.sep, "/"), path))
    return out


_DISTRIBUTIONS = {"dateutil": "python-dateutil"}  # import name -> distribution name, where they differ
OLDEST_PYTHON: Tuple[int, ...] = (3, 9)


def _lower_bound(spec: str) -> Tuple[int, ...]:
    """The lowest Python a Requires-Python value admits (its largest '>=' or '~=' bound)."""
    best: Tuple[int, ...] = ()
    for item in spec.split(","):
        item = item.strip().replace(" ", "")
        for op in (">=", "~=", ">"):
            if item.startswith(op):
                try:
                    best = max(best, tuple(int(x) for x in item[len(op):].split(".")[:2] if x.isdigit()))
                except ValueError:
                    pass
                break
    return best


def oldest_python() -> Tuple[Tuple[int, ...], List[str]]:
    """The oldest Python every module of the bundle supports, and the modules that raise it above 3.9."""
    from importlib import metadata

    need: Tuple[int, ...] = OLDEST_PYTHON
    why: List[str] = []
    for name in WORKER_MODULES:
        try:
            meta = metadata.distribution(_DISTRIBUTIONS.get(name, name)).metadata
        except metadata.PackageNotFoundError:
            continue  # no metadata (some distribution packages): its own imports tell at run time
        bound = _lower_bound(meta["Requires-Python"] or "")
        if bound > OLDEST_PYTHON:
            why.append("%s %s needs Python %s" % (meta["Name"], meta["Version"], ".".join(map(str, bound))))
            need = max(need, bound)
    return need, why


def contents() -> List[Tuple[str, str]]:
    """Every file of the bundle's site directory: (name inside it, source path), sorted."""
    files = _package_files()
    for name in WORKER_MODULES:
        files += _module_files(name)
    return sorted(set(files))


def build(output: str) -> Dict[str, object]:
    """Write the bundle to ``output`` (atomically); return its id, size and file count."""
    import tempfile  # here, not at the top: submitting with a cached bundle needs neither
    import zipfile

    files = contents()
    digest = hashlib.sha256(__version__.encode())
    blobs: List[Tuple[str, bytes]] = []
    for rel, src in files:
        with open(src, "rb") as f:
            data = f.read()
        blobs.append((rel, data))
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    bundle_id = digest.hexdigest()[:16]
    python_min, why = oldest_python()
    with open(_bootstrap_path(), "rb") as f:
        bootstrap = f.read()
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".persistjob-bundle-", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as raw:
            raw.write(b"#!/usr/bin/env python3\n")
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
                fixed = (1980, 1, 1, 0, 0, 0)  # reproducible: same inputs, same bytes
                meta = [("__main__.py", bootstrap), ("BUNDLE_ID", bundle_id.encode()),
                        ("PYTHON_MIN", ("%d.%d" % python_min[:2]).encode())]
                for name, data in meta + \
                        [("site/" + rel, data) for rel, data in blobs]:
                    info = zipfile.ZipInfo(name, fixed)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    z.writestr(info, data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return {"path": os.path.abspath(output), "id": bundle_id, "bytes": os.path.getsize(output), "files": len(blobs),
            "python": "%d.%d" % python_min[:2], "why": why}


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "persistjob", "bundles")


def _fingerprint() -> str:
    """What the bundle is built from, cheaply (``persistjob submit`` is measured against condor_submit):
    persistjob's own files, and where each worker module lives and when it was installed."""
    import importlib.util

    h = hashlib.sha256(__version__.encode())
    for rel, src in _package_files() + [(os.path.basename(_BOOTSTRAP), _bootstrap_path())]:
        st = os.stat(src)
        h.update(("%s\0%d\0%d\n" % (rel, st.st_size, st.st_mtime_ns)).encode())
    for name in WORKER_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None and spec.origin else ""
        h.update(("%s\0%s\0%d\n" % (name, origin, os.stat(origin).st_mtime_ns if origin else 0)).encode())
    return h.hexdigest()[:12]


def _bootstrap_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), _BOOTSTRAP)


def cached(directory: Optional[str] = None) -> str:
    """The bundle of this installation, built once per version and content and kept on the submit side."""
    path = os.path.join(directory or cache_dir(), "persistjob-%s-%s.pyz" % (__version__, _fingerprint()))
    if not os.path.isfile(path):
        build(path)
    return path


def describe(info: Dict[str, object]) -> str:
    text = "bundle %s: %s, %.1f MB, %s files, runs on Python %s+" % (
        info["id"], info["path"], float(str(info["bytes"])) / 1e6, info["files"], info["python"])
    if info.get("why"):
        text += " (not 3.9: %s; install releases that support 3.9 to build for older sites)" % "; ".join(map(str, info["why"]))  # type: ignore[call-overload]
    return text


__all__ = ["build", "cached", "contents", "BUNDLE_NAME", "WORKER_MODULES"]
