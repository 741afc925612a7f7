"""The ``__main__`` of a persistjob bundle (persistjob/bundle.py writes this file into the zipapp).

Standard library only, Python 3.9+: it runs before anything else is importable.  It unpacks the
bundle's ``site/`` once per bundle id into the first writable cache directory, puts it first on
``sys.path`` and runs ``persistjob``'s command line.  ``PERSISTJOB_BUNDLE`` tells persistjob (and the
payload) the bundle's path, so that ``persistjob local`` re-runs the bundle, not an installation.
"""

import os
import shutil
import sys
import tempfile
import zipfile


def _candidates():
    explicit = os.environ.get("PERSISTJOB_BUNDLE_DIR")
    if explicit:
        yield explicit
    xdg = os.environ.get("XDG_CACHE_HOME")
    home = os.path.expanduser("~")
    if xdg:
        yield os.path.join(xdg, "persistjob")
    if home and home != "~":
        yield os.path.join(home, ".cache", "persistjob")
    yield os.path.join(os.getcwd(), ".persistjob-bundle")
    yield os.path.join(tempfile.gettempdir(), "persistjob-bundle-%d" % os.getuid())


def _unpack(archive):
    with zipfile.ZipFile(archive) as z:
        bundle_id = z.read("BUNDLE_ID").decode("ascii").strip()
        errors = []
        for base in _candidates():
            target = os.path.join(base, "bundle-" + bundle_id)
            if os.path.isfile(os.path.join(target, ".complete")):
                return os.path.join(target, "site")
            try:
                os.makedirs(base, mode=0o700, exist_ok=True)
                tmp = tempfile.mkdtemp(prefix=".unpack-", dir=base)
                try:
                    z.extractall(tmp, [n for n in z.namelist() if n.startswith("site/")])
                    open(os.path.join(tmp, ".complete"), "w").close()
                    try:
                        os.rename(tmp, target)
                    except OSError:
                        if not os.path.isfile(os.path.join(target, ".complete")):
                            raise
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                return os.path.join(target, "site")
            except OSError as exc:
                errors.append("%s: %s" % (base, exc.strerror or exc))
    sys.stderr.write("persistjob: error: cannot unpack the bundle %s (%s); set PERSISTJOB_BUNDLE_DIR to a "
                     "writable directory\n" % (archive, "; ".join(errors)))
    sys.exit(78)


def _check_python(archive):
    with zipfile.ZipFile(archive) as z:
        try:
            need = tuple(int(x) for x in z.read("PYTHON_MIN").decode("ascii").split("."))
        except KeyError:
            need = (3, 9)
    if sys.version_info[:2] < need:
        sys.stderr.write("persistjob: error: this bundle needs Python %s or newer; this is %d.%d (%s)\n"
                         % (".".join(map(str, need)), sys.version_info[0], sys.version_info[1], sys.executable))
        sys.exit(78)


def main():
    archive = os.path.abspath(sys.argv[0])
    _check_python(archive)
    sys.path.insert(0, _unpack(archive))
    os.environ["PERSISTJOB_BUNDLE"] = archive
    from persistjob.cli import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
