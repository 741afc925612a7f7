"""Store credentials for jobs, kept out of the job ad (submit side).

A job ad is readable by every user of the pool (``condor_q -l``), and so is its ``Environment``:
no secret may go there.  ``persistjob submit`` instead resolves the submitter's credentials for the
store through boto3's standard chain (environment, ``~/.aws/credentials``, profile), writes them to
a file of mode 0600 in a private directory of the submitter, and sends that file with the job as an
input file; the job's environment names the file (``AWS_SHARED_CREDENTIALS_FILE``), a path, never a
secret.  Grid stores use what HTCondor already has: ``x509userproxy`` (HTCondor sends and refreshes
the proxy) and a bearer-token file (``BEARER_TOKEN_FILE``).  docs/htcondor.md has the threat model.
"""

import fnmatch
import hashlib
import os
import tempfile
from typing import Any, List, Mapping, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import parse_qs

from . import constants as C
from .errors import ConfigError, InvalidURL
from .identity import shown_url

#: Names (or name patterns) of variables that hold secrets.  A name ending in _FILE, _DIR or _PATH
#: holds a path, which is no secret (AWS_SHARED_CREDENTIALS_FILE, BEARER_TOKEN_FILE).
SECRET_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "*SECRET*", "*TOKEN*",
                "*PASSWORD*", "*PASSWD*", "*PRIVATE_KEY*", "*CREDENTIAL*", "*API_KEY*", "*ACCESS_KEY*")
_PATH_SUFFIXES = ("_FILE", "_DIR", "_PATH", "_LOCATION")
CREDENTIALS_NAME = "persistjob-credentials"


def is_secret(name: str) -> bool:
    upper = name.upper()
    if upper.endswith(_PATH_SUFFIXES):
        return False
    return any(fnmatch.fnmatchcase(upper, p) for p in SECRET_NAMES)


def _refusal(what: str, names: Sequence[str]) -> ConfigError:
    return ConfigError("%s would put %s into the job ad, where every user of the pool can read it (condor_q -l); "
                       "persistjob sends the store's credentials as a 0600 file instead (--credentials FILE to "
                       "choose it): name the variables the job needs one by one"
                       % (what, ", ".join(sorted(set(names)))))


def check_getenv(patterns: Sequence[str], environ: Mapping[str, str]) -> None:
    """Refuse getenv patterns that match a secret variable: a known secret name, or one set here now."""
    for p in patterns:
        for item in p.split(","):
            item = item.strip()
            if not item or item.startswith("-"):
                continue
            known = [n for n in SECRET_NAMES if "*" not in n and fnmatch.fnmatchcase(n, item.upper())]
            present = [n for n in environ if is_secret(n) and fnmatch.fnmatchcase(n, item)]
            if is_secret(item.replace("*", "")) or known or present:
                raise _refusal("--getenv %r" % item, (known + present) or [item])


def check_environment(names: Sequence[str]) -> None:
    bad = [n for n in names if is_secret(n)]
    if bad:
        raise _refusal("the environment entry", bad)


class Shipment(NamedTuple):
    """What a job gets to reach its store: input files, environment (paths only), submit commands."""

    files: Tuple[str, ...] = ()
    environment: Tuple[Tuple[str, str], ...] = ()
    commands: Tuple[Tuple[str, str], ...] = ()


def _private_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = os.path.join(base, "persistjob", "credentials")
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def _write_private(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _s3_profile(url: str) -> Optional[str]:
    query = url.split("?", 1)[1] if "?" in url else ""
    values = parse_qs(query).get("profile")
    return values[-1] if values else None


def botocore_session(profile: Optional[str] = None) -> Any:
    """A botocore session that never asks a cloud's instance metadata service for credentials.

    botocore's chain ends with the EC2 metadata service (169.254.169.254), which it tries whenever
    nothing else gave credentials: on a grid worker node or a submit host that is a connection to an
    address not of this machine (and a second of delay).  It is asked only when the environment says
    so explicitly: ``AWS_EC2_METADATA_DISABLED=false``.  Raises botocore's ProfileNotFound.
    """
    import botocore.session

    session = botocore.session.Session(profile=profile)
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() != "false":
        session.get_component("credential_provider").remove("iam-role")
    return session


def _s3_credentials(store: str, environ: Mapping[str, str]) -> Tuple[str, str, Optional[str]]:
    """(key id, secret, session token) as boto3 resolves them for this store."""
    profile = _s3_profile(store)
    if profile is None and environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        # the first provider of botocore's chain, without importing botocore (submit is measured)
        return environ["AWS_ACCESS_KEY_ID"], environ["AWS_SECRET_ACCESS_KEY"], environ.get("AWS_SESSION_TOKEN") or None
    try:
        creds = botocore_session(profile).get_credentials()
    except ImportError:
        raise ConfigError("resolving S3 credentials needs boto3 on the submit side (pip install boto3)") from None
    except Exception as exc:  # an unknown profile, an unreadable config
        raise ConfigError("cannot resolve S3 credentials for %s: %s" % (shown_url(store), type(exc).__name__)) from None
    if creds is None:
        raise ConfigError("no S3 credentials found for %s (environment, ~/.aws/credentials, profile): set them, give "
                          "--credentials FILE, or --no-credentials when the site provides them" % shown_url(store))
    frozen = creds.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token or None


def _s3_file(store: str, environ: Mapping[str, str]) -> str:
    """The submitter's S3 credentials, resolved as boto3 resolves them, written to a private 0600 file."""
    profile = _s3_profile(store)
    key_id, secret, token = _s3_credentials(store, environ)
    lines = ["[%s]" % (profile or "default"), "aws_access_key_id = %s" % key_id, "aws_secret_access_key = %s" % secret]
    if token:
        lines.append("aws_session_token = %s" % token)
    key = hashlib.sha256(("%s\0%s\0%s" % (store.split("?", 1)[0], profile, key_id)).encode()).hexdigest()[:16]
    d = os.path.join(_private_dir(), key)
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = os.path.join(d, CREDENTIALS_NAME)
    _write_private(path, "\n".join(lines) + "\n")
    return path


def _check_private(path: str) -> str:
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError("--credentials %s: %s" % (path, exc.strerror)) from None
    if st.st_mode & 0o077:
        raise ConfigError("--credentials %s is readable by others (mode %04o): chmod 600 it" % (path, st.st_mode & 0o777))
    return path


def shipment(store: str, credentials: Optional[str] = None, none: bool = False,
             environ: Optional[Mapping[str, str]] = None) -> Shipment:
    """How a job of ``store`` gets its credentials (see the module's docstring)."""
    environ = os.environ if environ is None else environ
    scheme = store.split("://", 1)[0] if "://" in store else ""
    # the machine ad's value, known only where the job runs (options.is_match_time, a layer above storage)
    per_machine = "$$(" in store
    if not per_machine and scheme not in C.STORE_SCHEMES:  # before any credential is looked for
        # the URL itself is not echoed: its user part or query could hold a secret
        raise InvalidURL("store URL %s: expected one of %s" % ("scheme %r" % scheme if scheme else "without a scheme",
                                                               C.STORE_SCHEMES_SHOWN))
    if none or per_machine or scheme == "file":
        return Shipment()
    files: List[str] = []
    env: List[Tuple[str, str]] = []
    commands: List[Tuple[str, str]] = []
    if scheme == "s3":
        path = _check_private(credentials) if credentials else _s3_file(store, environ)
        files.append(path)
        env.append(("AWS_SHARED_CREDENTIALS_FILE", os.path.basename(path)))
        return Shipment(tuple(files), tuple(env), ())
    # grid stores: the X.509 proxy (HTCondor sends it and keeps it fresh), and a bearer token file if any
    if credentials:
        files.append(_check_private(credentials))
        env.append(("BEARER_TOKEN_FILE", os.path.basename(files[-1])))
    else:
        token = environ.get("BEARER_TOKEN_FILE") or os.path.join(environ.get("XDG_RUNTIME_DIR", "/tmp"),
                                                                 "bt_u%d" % os.getuid())
        if os.path.isfile(token):
            files.append(_check_private(token))
            env.append(("BEARER_TOKEN_FILE", os.path.basename(token)))
    proxy = environ.get("X509_USER_PROXY") or "/tmp/x509up_u%d" % os.getuid()
    if os.path.isfile(proxy):
        commands.append(("x509userproxy", proxy))
    if not files and not commands:
        raise ConfigError("no credentials for %s: no X.509 proxy (X509_USER_PROXY or /tmp/x509up_u%d) and no bearer "
                          "token (BEARER_TOKEN_FILE); make one, give --credentials FILE, or --no-credentials when "
                          "the site provides them" % (shown_url(store), os.getuid()))
    return Shipment(tuple(files), tuple(env), tuple(commands))


def grid_proxy(environ: Mapping[str, str]) -> str:
    """The submitter's X.509 proxy (an ARC CE authenticates the job's owner with it)."""
    proxy = environ.get("X509_USER_PROXY") or "/tmp/x509up_u%d" % os.getuid()
    if not os.path.isfile(proxy):
        raise ConfigError("--grid: no X.509 proxy at %s: make one (arcproxy, voms-proxy-init) or set X509_USER_PROXY"
                          % proxy)
    return proxy


def environment_value(pairs: Sequence[Tuple[str, str]], extra: str = "") -> str:
    """An HTCondor ``environment`` value (new syntax) from pairs, plus a user's own new-syntax value."""
    parts = ["%s=%s" % (k, ("'%s'" % v.replace("'", "''")) if (" " in v or "'" in v) else v) for k, v in pairs]
    inner = extra.strip()
    if inner.startswith('"') and inner.endswith('"'):
        inner = inner[1:-1]
    return '"%s"' % " ".join(parts + ([inner] if inner else []))


def environment_names(value: str) -> List[str]:
    """The variable names of an HTCondor ``environment`` value (new or old syntax)."""
    text = value.strip().strip('"')
    return [w.split("=", 1)[0] for w in text.replace(";", " ").split() if "=" in w]


__all__ = ["Shipment", "shipment", "check_getenv", "check_environment", "is_secret", "environment_value"]
