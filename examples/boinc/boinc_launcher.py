#!/usr/bin/env python3
"""Run the real BOINC client as a persistent job's payload (persistjob run --mode exit-code).

The checkpoint directory (the working directory) is BOINC's data directory, so the whole client
state travels through the store from worker node to worker node. Before the client starts, its
host identity is pinned: ``host_cpid`` in client_state.xml becomes md5(job ID), as the 2010
original did with the Condor job ID, so moving between nodes never creates a new BOINC host
(the client generates a MAC-based CPID only when it has none).

Consistent checkpoints: every --checkpoint-every, and on SIGTERM (lifetime over or eviction), the
launcher asks the client to quit (``boinccmd --quit``, bounded by --quit-timeout, then SIGKILL)
and exits 85; the wrapper commits the stopped data directory and starts the launcher again.

Project URL and account key come from the submit side (--project-url/--account-key, or
$BOINC_PROJECT_URL/$BOINC_ACCOUNT_KEY); the client attaches once, and the attachment is part of
the state from then on. --offline (tests, air-gapped trials) keeps the client from any network
use: no project list or version fetch, no reference-site check, network mode "never".
Standard library only.
"""

import argparse
import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time

CC_CONFIG_OFFLINE = """<cc_config>
  <options>
    <dont_contact_ref_site>1</dont_contact_ref_site>
    <no_info_fetch>1</no_info_fetch>
    <suppress_net_info>1</suppress_net_info>
  </options>
</cc_config>
"""


def log(msg):
    print("boinc-launcher: %s" % msg, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pin_host_cpid(path, cpid):
    """Set <host_cpid> in client_state.xml (create a minimal state when there is none yet)."""
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("<client_state>\n<host_info>\n    <host_cpid>%s</host_cpid>\n</host_info>\n</client_state>\n" % cpid)
        return "created"
    with open(path) as f:
        text = f.read()
    if "<host_cpid>" in text:
        new = re.sub(r"<host_cpid>[^<]*</host_cpid>", "<host_cpid>%s</host_cpid>" % cpid, text, count=1)
    elif "<host_info>" in text:
        new = text.replace("<host_info>", "<host_info>\n    <host_cpid>%s</host_cpid>" % cpid, 1)
    else:
        new = text.replace("<client_state>", "<client_state>\n<host_info>\n    <host_cpid>%s</host_cpid>\n</host_info>" % cpid, 1)
    if new != text:
        with open(path + ".pjtmp", "w") as f:
            f.write(new)
        os.rename(path + ".pjtmp", path)
        return "pinned"
    return "kept"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--project-url", default=os.environ.get("BOINC_PROJECT_URL"))
    ap.add_argument("--account-key", default=os.environ.get("BOINC_ACCOUNT_KEY"))
    ap.add_argument("--checkpoint-every", type=float, default=3600.0, help="seconds between clean stops (exit 85)")
    ap.add_argument("--quit-timeout", type=float, default=30.0)
    ap.add_argument("--offline", action="store_true", help="no network use at all (tests)")
    ap.add_argument("--boinc", default="boinc")
    ap.add_argument("--boinccmd", default="boinccmd")
    a = ap.parse_args()

    job_id = os.environ.get("PERSISTJOB_JOB_ID")
    if not job_id:
        log("PERSISTJOB_JOB_ID is not set: run me under persistjob run")
        return 78
    cpid = hashlib.md5(job_id.encode()).hexdigest()
    datadir = os.getcwd()
    log("run %s, restored generation %s, data directory %s" % (os.environ.get("PERSISTJOB_RUN", "?"),
                                                             os.environ.get("PERSISTJOB_GENERATION", "?"), datadir))
    if a.offline:
        with open("cc_config.xml", "w") as f:
            f.write(CC_CONFIG_OFFLINE)
    if not os.path.exists("gui_rpc_auth.cfg"):
        with open("gui_rpc_auth.cfg", "w") as f:
            f.write(secrets.token_hex(16) + "\n")
        os.chmod("gui_rpc_auth.cfg", 0o600)
    with open("gui_rpc_auth.cfg") as f:
        password = f.read().strip()
    log("host CPID %s (md5 of the job ID): %s" % (cpid, pin_host_cpid("client_state.xml", cpid)))

    port = free_port()
    cmd = [a.boinc, "--dir", datadir, "--gui_rpc_port", str(port), "--suppress_net_info", "--redirectio"]
    if a.offline:
        cmd.append("--no_info_fetch")
    client = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    rpc = [a.boinccmd, "--host", "127.0.0.1:%d" % port, "--passwd", password]

    def boinccmd(*args, timeout=15):
        try:
            return subprocess.run(rpc + list(args), capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            return subprocess.CompletedProcess(args, 1, "", str(exc))

    stop = {"why": None}

    def on_term(signum, frame):
        stop["why"] = "SIGTERM"

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    end = time.monotonic() + 30
    while time.monotonic() < end and client.poll() is None:
        if boinccmd("--get_host_info", timeout=5).returncode == 0:
            break
        time.sleep(0.2)
    if client.poll() is not None:
        log("the BOINC client exited at start (%d); see stdoutdae.txt" % client.returncode)
        return 1
    log("client started (pid %d, GUI RPC on 127.0.0.1:%d)" % (client.pid, port))
    if a.offline:
        boinccmd("--set_network_mode", "never")
    elif a.project_url and a.account_key:
        with open("client_state.xml") as f:
            attached = a.project_url.rstrip("/") in f.read()
        if not attached:
            r = boinccmd("--project_attach", a.project_url, a.account_key, timeout=120)
            log("attach %s: %s" % (a.project_url, "ok" if r.returncode == 0 else r.stdout + r.stderr))

    deadline = time.monotonic() + a.checkpoint_every
    while stop["why"] is None and time.monotonic() < deadline and client.poll() is None:
        time.sleep(0.2)
    if client.poll() is not None and stop["why"] is None:
        log("the BOINC client exited by itself (%d)" % client.returncode)
        return 1
    # (a stop from the scheduler's side reaches the whole process group: the client may have quit on that
    # SIGTERM already, which is its clean shutdown; it is logged as a quit below, not as a failure)
    why = stop["why"] or "checkpoint interval"
    t0 = time.monotonic()
    end = t0 + a.quit_timeout
    # A clean quit writes client_state.xml and exits. Under load the RPC itself can time out: ask again
    # while time is left, and after half of it send SIGTERM, which the client also treats as a clean
    # shutdown; only past --quit-timeout is it killed (and the state may be a few seconds old).
    asked = 0
    while client.poll() is None and time.monotonic() < end:
        if time.monotonic() - t0 < a.quit_timeout / 2:
            if boinccmd("--quit", timeout=max(1.0, min(10.0, end - time.monotonic()))).returncode == 0:
                asked += 1
        elif asked >= 0:
            client.terminate()
            asked = -1
        try:
            client.wait(timeout=max(0.1, min(2.0, end - time.monotonic())))
        except subprocess.TimeoutExpired:
            pass
    if client.poll() is None:
        client.kill()
        client.wait()
        log("client did not quit within %.0fs (%s): killed" % (a.quit_timeout, why))
    else:
        log("client quit cleanly in %.1fs (%s, %s); exiting 85 so that the stopped state is committed"
            % (time.monotonic() - t0, why, "SIGTERM" if asked < 0 else "RPC quit"))
    return 85


if __name__ == "__main__":
    sys.exit(main())
