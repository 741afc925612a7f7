#!/usr/bin/env python3
"""The Work Queue executor, side by side with a bare Work Queue loop, on this machine.

1. Dispatch throughput: N short pilot tasks (input: the agent; outputs: stdout and stderr
   files) on W local workers (1 core each). Bare: ``q.submit()`` x N and a ``q.wait()`` loop.
   Ours: the same N jobs spooled into the durable table and run by ``persistjob wq manager``
   (a separate process) until all are completed. Target: bare/ours time ratio >= 0.9.
2. Manager memory with 10,000 tracked jobs (all handed to Work Queue, no worker): VmRSS.
   Target < 100 MB.
3. Time to get 200 pilots running from zero: manager up, 200 pilots submitted through the
   ``condor_submit`` shim, 200 workers started by ``persistjob wq workers start-workers``;
   time until ``condor_q`` shows 200 running.

Usage: python benchmarks/wq_bench.py [--tasks 2000] [--workers 12] [--rounds 3] [--pilots 200]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from persistjob.wq.manager import import_work_queue  # noqa: E402
from persistjob.wq.manager.table import COMPLETED, JobTable  # noqa: E402
from tests.servers import free_ports  # noqa: E402


def start_workers(n, port, env=None):
    return [subprocess.Popen(["work_queue_worker", "--cores", "1", "-t", "120", "127.0.0.1", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
            for _ in range(n)]


def stop(procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def make_agent(d, body=":\n"):
    path = os.path.join(d, "agent.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path


def bare(n, workers, work):
    wq = import_work_queue()
    agent = make_agent(work)
    q = wq.WorkQueue(port=0)
    ws = start_workers(workers, q.port)
    try:
        end = time.monotonic() + 60
        while q.stats.workers_connected < workers and time.monotonic() < end:
            q.wait(0)
            time.sleep(0.05)
        t0 = time.perf_counter()
        for i in range(n):
            t = wq.Task("./agent > pilot.out 2> pilot.err")
            t.specify_input_file(agent, "agent", cache=False)
            t.specify_output_file(os.path.join(work, "b%d.out" % i), "pilot.out", cache=False)
            t.specify_output_file(os.path.join(work, "b%d.err" % i), "pilot.err", cache=False)
            t.specify_cores(1)
            q.submit(t)
        done = 0
        while not q.empty():
            t = q.wait(5)
            if t is not None:
                done += 1
        dt = time.perf_counter() - t0
        assert done == n
        return dt
    finally:
        stop(ws)
        del q


def manager(work, port, extra=()):
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.Popen([sys.executable, "-m", "persistjob", "-q", "wq", "manager", "--port", str(port), "--work-dir",
                          os.path.join(work, "awq"), *extra], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    end = time.monotonic() + 30
    while not os.path.exists(os.path.join(work, "awq", "manager.json")):
        assert time.monotonic() < end and p.poll() is None, "manager did not start"
        time.sleep(0.05)
    return p


def workers_connected(work):
    try:
        with open(os.path.join(work, "awq", "manager.json")) as f:
            return json.load(f).get("workers", 0)
    except (OSError, ValueError):
        return 0


def ours(n, workers, work):
    agent = make_agent(work)
    port = free_ports(1)[0]
    m = manager(work, port)
    ws = start_workers(workers, port)
    try:
        end = time.monotonic() + 60
        while workers_connected(work) < workers and time.monotonic() < end:
            time.sleep(0.05)
        table = JobTable(os.path.join(work, "awq"))
        jobs = [{"owner": "bench", "cmd": agent, "output": os.path.join(work, "o%d.out" % i),
                 "error": os.path.join(work, "o%d.err" % i)} for i in range(n)]
        t0 = time.perf_counter()
        table.submit(jobs)
        while table.counts()[COMPLETED] < n:
            time.sleep(0.02)
        dt = time.perf_counter() - t0
        table.close()
        return dt
    finally:
        stop(ws)
        stop([m])


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory(work, n=10000):
    agent = make_agent(work)
    table = JobTable(os.path.join(work, "awq"))
    table.submit([{"owner": "bench", "cmd": agent, "output": os.path.join(work, "m%d.out" % i)} for i in range(n)])
    m = manager(work, free_ports(1)[0], extra=["--max-jobs", str(n)])
    try:
        empty_end = time.monotonic() + 120
        while time.monotonic() < empty_end:
            left = n - table.dispatched()
            if left == 0:
                break
            time.sleep(0.2)
        time.sleep(2)
        return rss_kb(m.pid), table.dispatched()
    finally:
        table.close()
        stop([m])


def ramp(work, pilots):
    agent = make_agent(work, "sleep 120\n")
    port = free_ports(1)[0]
    m = manager(work, port)
    awq = os.path.join(work, "awq")
    env = dict(os.environ, PYTHONPATH=REPO, AWQ_WORKDIR=awq, PATH=os.path.join(awq, "bin") + os.pathsep + os.environ["PATH"],
               WQ_MASTER="127.0.0.1:%d" % port, WQ_NUM_FOREMEN="1", WQ_FOREMEN="127.0.0.1", WQ_MASTER_BASEPORT=str(port),
               WQ_NUM_WORKERS=str(pilots), WQ_WORKDIR=os.path.join(work, "wqw"), WQ_DRAIN=os.path.join(work, "drain"),
               WQ_IDLETIMEOUT="120")
    pj = [sys.executable, "-m", "persistjob", "wq", "workers"]
    try:
        t0 = time.perf_counter()
        sub = "executable = %s\noutput = /dev/null\nerror = /dev/null\nqueue %d\n" % (agent, pilots)
        subprocess.run(["condor_submit"], input=sub, text=True, env=env, check=True, capture_output=True)
        subprocess.run(pj + ["start-workers"], env=env, check=True, capture_output=True)
        t_started = time.perf_counter() - t0
        while True:
            r = subprocess.run(["condor_q", "-constraint", "JobStatus == 2", "-af", "ClusterId"], env=env,
                               capture_output=True, text=True)
            if len(r.stdout.split()) >= pilots:
                break
            assert time.perf_counter() - t0 < 600, "not all pilots ran"
            time.sleep(0.2)
        return time.perf_counter() - t0, t_started
    finally:
        subprocess.run(pj + ["stop-workers"], env=env, capture_output=True, timeout=300)
        stop([m])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pilots", type=int, default=200)
    a = ap.parse_args()
    if not shutil.which("work_queue_worker"):
        raise SystemExit("work_queue_worker missing: apt-get install coop-computing-tools python3-workqueue")
    times = {"bare": [], "ours": []}
    for r in range(a.rounds):
        for kind in (("bare", "ours") if r % 2 == 0 else ("ours", "bare")):
            work = tempfile.mkdtemp(prefix="pj-wqb-")
            try:
                times[kind].append((bare if kind == "bare" else ours)(a.tasks, a.workers, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    m = statistics.median
    print("Work Queue %s, %d cores" % (getattr(import_work_queue(), "__file__", "?"), os.cpu_count() or 0))
    print("dispatch throughput: %d pilot tasks (agent in, stdout/stderr out) on %d local workers, median of %d"
          % (a.tasks, a.workers, a.rounds))
    print("   bare Work Queue submit/wait loop: %.2fs (%.0f tasks/s)" % (m(times["bare"]), a.tasks / m(times["bare"])))
    print("   persistjob wq manager (durable table): %.2fs (%.0f tasks/s)" % (m(times["ours"]), a.tasks / m(times["ours"])))
    print("   ratio bare/ours: %.2f (target >= 0.9)" % (m(times["bare"]) / m(times["ours"])))
    work = tempfile.mkdtemp(prefix="pj-wqm-")
    try:
        kb, tracked = memory(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("manager memory with %d tracked jobs (all handed to Work Queue): %.1f MB RSS (target < 100 MB)"
          % (tracked, kb / 1024))
    work = tempfile.mkdtemp(prefix="pj-wqr-")
    try:
        total, launched = ramp(work, a.pilots)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("%d pilots from zero: submitted and %d workers launched in %.1fs, all running after %.1fs"
          % (a.pilots, a.pilots, launched, total))


if __name__ == "__main__":
    main()
