#!/usr/bin/env python3
"""Load benchmark: N concurrent clients against an fwpd that is training one job.

    python3 Benchmarks/load/load.py [--clients 32] [--seconds 30] [--rate 10] [--rounds 3]
                                    [--generator swift|python] [--fwpd .build/release/fwpd]

Starts its own fwpd on free loopback ports with a temporary state folder, submits a training
job (lm-bytes-small, long), then runs `rounds` rounds of two phases of `seconds` each: one
without load and one with N clients (closed loops, or paced with --rate; 9 status requests for
every submit), and a last quiet phase. Each loaded phase is compared with the mean of the quiet
phases on either side of it. Prints requests/s, p50/p99 latency, failures and the training
throughput of each phase, and the median slowdown over the rounds.

The clients come from `fwp-load` (compiled, one thread and DEALER socket per client; the
default) or from N Python processes with pyzmq (`--generator python`). Both run on the same
machine as the daemon, so their own CPU time is part of what the training job loses; it is
printed beside the daemon's.
"""
import argparse
import json
import multiprocessing as mp
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import zmq

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(sock, command, body, timeout_ms=10000):
    sock.send_multipart([b"FWP1", command.encode(), json.dumps(body).encode()])
    if not sock.poll(timeout_ms):
        return None
    return sock.recv_multipart()


def client(endpoint, seconds, job, index, out, rate, clients):
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    lat = {"status": [], "submit": []}
    failed = lost = 0
    n = 0
    end = time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < end:
        if rate > 0:  # paced: request n of client i is due at start + (n + i / clients) / rate
            delay = start + (n + index / clients) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        kind = "submit" if n % 10 == 9 else "status"
        body = {"job": job} if kind == "status" else {
            "task": "retrieval", "parameters": {"keys": 4, "max_steps": 1}, "priority": -1,
            "idempotency_key": f"load-{os.getpid()}-{index}-{n}"}
        t0 = time.perf_counter()
        reply = call(s, kind, body)
        dt = time.perf_counter() - t0
        n += 1
        if reply is None:
            lost += 1
            s.close()
            s = ctx.socket(zmq.DEALER)
            s.linger = 0
            s.connect(endpoint)
        elif reply[1] != b"ok":
            failed += 1
        else:
            lat[kind].append(dt)
    s.close()
    ctx.term()
    out.put((lat, failed, lost))


def python_load(req, args, job):
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = mp.Queue()
    procs = [mp.Process(target=client, args=(req, args.seconds, job, i, out, args.rate, args.clients)) for i in range(args.clients)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the joined client processes
    status = [x for r in results for x in r[0]["status"]]
    submit = [x for r in results for x in r[0]["submit"]]
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] * 1000 if len(xs) > 1 else float("nan")
    return {"status": {"count": len(status), "p50_ms": q(status, 50), "p99_ms": q(status, 99)},
            "submit": {"count": len(submit), "p50_ms": q(submit, 50), "p99_ms": q(submit, 99)},
            "failed": sum(r[1] for r in results), "lost": sum(r[2] for r in results),
            "cpu_seconds": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime}


def swift_load(req, args, job, round_index):
    exe = os.path.join(os.path.dirname(args.fwpd), "fwp-load")
    cmd = [exe, "--endpoint", req, "--job", str(job), "--clients", str(args.clients), "--seconds", str(args.seconds),
           "--rate", str(args.rate), "--key-prefix", f"r{round_index}"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(events, t0, t1, tokens_per_step):
    pts = [(e["time"], e["step"]) for e in events if e["kind"] == "progress" and t0 <= e["time"] <= t1]
    if len(pts) < 2:
        return float("nan")
    (ta, sa), (tb, sb) = pts[0], pts[-1]
    return (sb - sa) * tokens_per_step / (tb - ta)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rate", type=float, default=0, help="requests/s per client (0: closed loop, as fast as replies come)")
    ap.add_argument("--fwpd", default=os.path.join(ROOT, ".build", "release", "fwpd"))
    ap.add_argument("--generator", choices=["swift", "python"], default="swift")
    ap.add_argument("--rounds", type=int, default=1, help="quiet/loaded phase pairs (the slowdown is their median)")
    ap.add_argument("--daemon-arg", action="append", default=[], help="extra fwpd flag, e.g. --daemon-arg=--request-nice=0")
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="fwpd-load-")
    req, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    log = open(os.path.join(state, "fwpd.log"), "w")
    daemon = subprocess.Popen([args.fwpd, "--state-dir", state, "--request-endpoint", req, "--publish-endpoint", pub, "--http-address", "127.0.0.1:0",
                               "--tasks-dir", os.path.join(ROOT, "tasks"), "--log-level", "warning"] + args.daemon_arg, stdout=log, stderr=log)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(req)
    for _ in range(100):
        if call(s, "health", {}, 200):
            break
    batch, segment = 16, 128
    r = call(s, "submit", {"preset": "lm-bytes-small", "parameters": {"steps": 1000000, "eval_every": 1000000}})
    job = json.loads(r[2])["job"]["id"]
    while json.loads(call(s, "status", {"job": job})[2])["state"] != "running":
        time.sleep(0.1)
    time.sleep(3)  # warm-up
    pace = f"{args.rate:g} req/s each" if args.rate > 0 else "closed loop"
    print(f"clients {args.clients} ({args.generator}, {pace}), {args.seconds:.0f} s per phase, {args.rounds} round(s), {os.cpu_count()} cores")
    phases = []
    for round_index in range(args.rounds):
        quiet0, cpu_q0 = time.time(), cpu_seconds(daemon.pid)
        time.sleep(args.seconds)
        quiet1 = load0 = time.time()
        cpu_q1 = cpu_l0 = cpu_seconds(daemon.pid)
        res = python_load(req, args, job) if args.generator == "python" else swift_load(req, args, job, round_index)
        load1, cpu_l1 = time.time(), cpu_seconds(daemon.pid)
        phases.append((quiet0, quiet1, load0, load1, res, (cpu_q1 - cpu_q0) / (quiet1 - quiet0), (cpu_l1 - cpu_l0) / (load1 - load0)))
    # A closing quiet phase, so that every loaded phase has a quiet one on each side.
    closing0 = time.time()
    time.sleep(args.seconds)
    closing1 = time.time()
    events = json.loads(call(s, "events", {"job": job, "limit": 10000})[2])["events"]
    call(s, "cancel", {"job": job})
    s.close()
    ctx.term()
    daemon.terminate()
    daemon.wait(60)
    slowdowns = []
    quiet_windows = [(p[0], p[1]) for p in phases] + [(closing0, closing1)]
    quiet_all = [throughput(events, a, b, batch * segment) for (a, b) in quiet_windows]
    for i, (quiet0, quiet1, load0, load1, res, quiet_cores, load_cores) in enumerate(phases):
        elapsed = load1 - load0
        st, sb = res["status"], res["submit"]
        # The quiet reference is the mean of the quiet phases just before and just after this
        # loaded phase, which cancels a steady drift of the machine's speed across the round.
        quiet_tps = (quiet_all[i] + quiet_all[i + 1]) / 2
        load_tps = throughput(events, load0, load1, batch * segment)
        slowdowns.append(1 - load_tps / quiet_tps)
        gen_cores = res["cpu_seconds"] / elapsed
        print(f"status: {st['count'] / elapsed:8.0f} req/s  p50 {st['p50_ms']:6.2f} ms  p99 {st['p99_ms']:6.2f} ms")
        print(f"submit: {sb['count'] / elapsed:8.0f} req/s  p50 {sb['p50_ms']:6.2f} ms  p99 {sb['p99_ms']:6.2f} ms")
        print(f"failed {res['failed']}, lost {res['lost']}")
        print(f"training: {quiet_tps:8.0f} tokens/s without load, {load_tps:8.0f} with load ({slowdowns[-1] * 100:+.1f}% slower)")
        print(f"CPU: fwpd {quiet_cores:.2f} cores without load, {load_cores:.2f} with load; load generator {gen_cores:.2f} cores")
    if len(slowdowns) > 1:
        print(f"median slowdown over {len(slowdowns)} rounds: {statistics.median(slowdowns) * 100:+.1f}%")


if __name__ == "__main__":
    main()
