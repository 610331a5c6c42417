#!/usr/bin/env python3
"""What a watching browser costs training: one long training job in fwpd, and alternating
phases of `seconds` each without and with headless Chromium showing the job's page (live curves)
and the jobs page (live list) in two windows.

    python3 Benchmarks/dashboard/overhead.py [--rounds 3] [--seconds 30] [--preset lm-bytes-small]

Starts its own fwpd (one worker, one thread) on free loopback ports with a temporary state
folder, pinned to core 0, and keeps itself and the browsers off core 0: what is measured is what
serving the pages and streams costs fwpd's own core, not the browser's drawing (which runs on the
user's machine in practice). Each phase's throughput is the median tokens/s of the progress events stored
during it; each watched phase is compared with the mean of the quiet phases on either side.
Prints one line per phase and the median slowdown over the rounds. Needs selenium and Debian's
chromium and chromium-driver (scripts/bootstrap test).
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from fwp_client import Client, Unreachable  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--preset", default="lm-bytes-small")
    ap.add_argument("--fwpd", default=os.path.join(ROOT, ".build", "release", "fwpd"))
    args = ap.parse_args()

    state = tempfile.mkdtemp(prefix="fwpd-dashboard-bench-")
    req, pub, http = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", free_port()
    log = open(os.path.join(state, "log"), "w")
    cores = sorted(os.sched_getaffinity(0))
    pin = ["taskset", "-c", str(cores[0])] if len(cores) > 1 else []
    daemon = subprocess.Popen(pin + [args.fwpd, "--state-dir", state, "--request-endpoint", req, "--publish-endpoint", pub,
                               "--http-address", f"127.0.0.1:{http}", "--web-dir", os.path.join(ROOT, "web"),
                               "--tasks-dir", os.path.join(ROOT, "tasks"), "--workers", "1", "--threads-per-job", "1",
                               "--data-roots", "/usr/share/games/fortunes"], stdout=log, stderr=log)
    if len(cores) > 1:
        os.sched_setaffinity(0, cores[1:])  # this script and the browsers it starts
    client = Client(req, pub, timeout=0.3)
    for _ in range(100):
        try:
            client.health()
            break
        except Unreachable:
            time.sleep(0.1)
    client.timeout = 10
    url = f"http://127.0.0.1:{http}"
    try:
        job = client.submit(preset=args.preset, parameters={"steps": 1000000, "eval_every": 200})["job"]["id"]
        while client.status(job)["state"] != "running":
            time.sleep(0.2)
        time.sleep(10)  # past warm-up and the first evaluation

        def phase(watched):
            drivers = []
            if watched:
                drivers = [browser(), browser()]
                drivers[0].get(f"{url}/job?id={job}")
                drivers[1].get(f"{url}/")
                time.sleep(3)  # the pages have loaded and are following
            start = time.time()
            time.sleep(args.seconds)
            end = time.time()
            for d in drivers:
                d.quit()
            events, after = [], 0
            while True:
                more = client.events(job, after=after, limit=10000)
                if not more:
                    break
                events += more
                after = more[-1]["seq"]
            rates = [e["tokens_per_second"] for e in events
                     if e["kind"] == "progress" and start <= e["time"] <= end and e.get("tokens_per_second")]
            return statistics.median(rates)

        quiet = [phase(False)]
        print(f"quiet    {quiet[0]:10.0f} tokens/s", flush=True)
        slowdowns = []
        for r in range(args.rounds):
            w = phase(True)
            q = phase(False)
            quiet.append(q)
            base = (quiet[-2] + quiet[-1]) / 2
            slowdowns.append(1 - w / base)
            print(f"watched  {w:10.0f} tokens/s   ({100 * slowdowns[-1]:+.1f}% against the quiet phases around it)",
                  flush=True)
            print(f"quiet    {q:10.0f} tokens/s", flush=True)
        print(f"median slowdown with a browser watching: {100 * statistics.median(slowdowns):+.1f}% "
              f"({args.rounds} rounds of {args.seconds:.0f} s, {args.preset})")
        client.cancel(job)
    finally:
        daemon.terminate()
        daemon.wait(60)


if __name__ == "__main__":
    main()
