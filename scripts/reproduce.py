"""The paper's experiments, one command each: `scripts/reproduce retrieval [--quick]`.

Uses a running fwpd (or starts one, as `make demo` does), submits the experiment's sweeps with
fixed idempotency keys (running the command again, after a stop or a crash, picks up the same
sweeps: their points are ordinary durable jobs), follows them with a progress line, then writes
the results page and its figures from the results stored in fwpd. No number on the page is
typed in by hand except the paper's, which are marked as such.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from fwp_client import Client, Unreachable  # noqa: E402

RESULTS = os.path.join(ROOT, "docs", "results")

# The paper's Figure 2 (setting 1, d_key = 64), read from its text and the reference's logs:
# the largest S each model solves (best eval loss ≤ 0.001), and a few published losses.
PAPER_SOLVED = {"linear": 40, "dpfp-1": 100, "dpfp-2": 240, "dpfp-3": 340, "favor-64": None, "softmax": 340}
PAPER_POINTS = {
    "linear": [(40, 0.001), (60, 0.025), (80, 0.108)],
    "softmax": [(340, 0.001), (600, 0.030)],
}
PAPER_SETTING2 = {("linear", "delta", 20): 0.001, ("linear", "sum", 20): 0.097}

# The experiments. Each is a list of sweeps: (name, preset, fixed parameters, grid, seeds).
# The capacity d_dot of each feature map grows with key_size (ELU+1: d, DPFP-ν: 2νd, FAVOR+:
# 2m), so the paper's whole S range is also run at key_size 16, where every capacity is a quarter
# of the paper's and each point costs a fraction: the same curve shapes, within the budget.
ATTENTIONS = ["linear", "dpfp-1", "dpfp-2", "dpfp-3", "favor-64", "softmax"]


def retrieval_sweeps(quick):
    if quick:
        return [
            ("capacity-d16", "retrieval-capacity", {"key_size": 16},
             {"attention": ["linear", "dpfp-1", "dpfp-2", "softmax"], "keys": [10, 20, 40]}, 1),
            ("update-d16", "retrieval-update", {"key_size": 16},
             {"rule": ["sum", "delta"], "keys": [10, 20]}, 1),
        ]
    return [
        ("capacity-d16", "retrieval-capacity", {"key_size": 16},
         {"attention": ATTENTIONS, "keys": [10, 20, 30, 40, 60, 80, 100, 120]}, 2),
        ("capacity-d64", "retrieval-capacity", {"key_size": 64},
         {"attention": ["linear", "dpfp-1"], "keys": [20, 40, 60, 80, 100, 120]}, 2),
        ("update-d64", "retrieval-update", {"key_size": 64},
         {"rule": ["sum", "delta"], "attention": ["linear", "dpfp-1"], "keys": [20, 40]}, 2),
    ]


def ensure_daemon(endpoint, events, state):
    client = Client(endpoint, events, timeout=1)
    try:
        client.health()
        return client
    except Unreachable:
        pass
    os.makedirs(state, exist_ok=True)
    log = open(os.path.join(state, "fwpd.log"), "a")
    print(f"starting fwpd (state in {state}, log in {state}/fwpd.log)")
    subprocess.Popen(
        [os.path.join(ROOT, ".build", "release", "fwpd"), "--state-dir", state, "--request-endpoint", endpoint,
         "--publish-endpoint", events, "--tasks-dir", os.path.join(ROOT, "tasks"), "--workers", "2",
         "--threads-per-job", "1"],
        stdout=log, stderr=log, start_new_session=True)
    for _ in range(100):
        try:
            client.health()
            return client
        except Unreachable:
            time.sleep(0.1)
    sys.exit(f"fwpd did not start; see {state}/fwpd.log")


def follow(client, sweeps):
    """Prints one progress line per change until every sweep has finished."""
    start, last = time.time(), None
    while True:
        statuses = [client.sweep_status(s["id"]) for s in sweeps]
        counts = {}
        for st in statuses:
            for k, v in st["sweep"]["counts"].items():
                counts[k] = counts.get(k, 0) + v
        total = sum(counts.values())
        done = sum(v for k, v in counts.items() if k in ("succeeded", "failed", "cancelled"))
        line = f"{done}/{total} points done ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})"
        if line != last:
            print(f"[{int(time.time() - start):5d} s] {line}", flush=True)
            last = line
        if all(st["sweep"]["state"] != "running" for st in statuses):
            return statuses
        time.sleep(2)


def points_of(client, statuses):
    """Every point with its full parameters (preset, fixed and swept) and its result."""
    rows = []
    for st in statuses:
        after = 0
        while True:
            page = client.list(sweep=st["sweep"]["id"], after=after, limit=1000)
            for j in page["jobs"]:
                rows.append({"sweep": st["sweep"]["id"], "job": j["id"], "state": j["state"], **j["parameters"],
                             **{f"result.{k}": v for k, v in (j.get("result") or {}).items()}})
            if page["next"] is None:
                break
            after = page["next"]
    return rows


def figure_capacity(rows, key_size, path, plt):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for attention in ATTENTIONS:
        pts = {}
        for r in rows:
            if r.get("key_size") == key_size and r.get("attention") == attention and "result.best_eval_loss" in r:
                pts.setdefault(r["keys"], []).append(r["result.best_eval_loss"])
        if not pts:
            continue
        xs = sorted(pts)
        ys = [sum(pts[x]) / len(pts[x]) for x in xs]
        seeds = max(len(v) for v in pts.values())
        line, = ax.plot(xs, ys, marker="o", label=attention + (f" (mean of {seeds} seeds)" if seeds > 1 else ""))
        for x in xs:  # every seed, faint
            ax.scatter([x] * len(pts[x]), pts[x], color=line.get_color(), alpha=0.3, s=10)
        if key_size == 64 and attention in PAPER_POINTS:
            px, py = zip(*PAPER_POINTS[attention])
            ax.scatter(px, py, marker="x", color=line.get_color(), s=60, label=f"{attention}, paper")
    ax.axhline(0.001, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("S (distinct keys; L = S)")
    ax.set_ylabel("best eval loss")
    ax.set_title(f"Setting 1 (capacity), key_size {key_size}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def largest_solved(rows, key_size, attention):
    by_s = {}
    for r in rows:
        if r.get("key_size") == key_size and r.get("attention") == attention and "result.best_eval_loss" in r:
            by_s.setdefault(r["keys"], []).append(r["result.best_eval_loss"])
    solved = [s for s, v in by_s.items() if all(x <= 0.001 for x in v)]
    return (max(solved) if solved else None), (max(by_s) if by_s else None)


def write_retrieval(client, statuses, quick, elapsed, command):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = points_of(client, statuses)
    suffix = "-quick" if quick else ""
    page = os.path.join(RESULTS, f"retrieval{suffix}.md")
    images = []
    for d in (16, 64):
        if any(r.get("key_size") == d and r["setting"] == 1 and "attention" in r for r in rows):
            name = f"retrieval-capacity-d{d}{suffix}.png"
            figure_capacity([r for r in rows if r["setting"] == 1], d, os.path.join(RESULTS, name), plt)
            images.append((d, name))
    with open(page, "w") as out:
        out.write("# Synthetic retrieval (paper section 6.1), reproduced\n\n")
        out.write(f"Generated by `{command}` from the results stored in fwpd, on "
                  f"{datetime.date.today().isoformat()}: {len(rows)} points; the command's last run waited "
                  f"{elapsed / 60:.0f} min for them on this machine (2 workers, one thread each). The task follows the reference code "
                  "(docs/TASKS.md). Values are each point's best eval loss; \"solved\" means ≤ 0.001 for "
                  "every seed. The paper's figures are marked as such.\n\n")
        out.write("## Setting 1: capacity\n\n")
        for d, name in images:
            out.write(f"![setting 1, key_size {d}]({name})\n\n")
        out.write("| key_size | model | largest S solved here | largest S run | paper (key_size 64) |\n|---|---|---|---|---|\n")
        for d, _ in images:
            for a in ATTENTIONS:
                solved, ran = largest_solved([r for r in rows if r["setting"] == 1], d, a)
                if ran is None:
                    continue
                paper = PAPER_SOLVED.get(a) if d == 64 else None
                out.write(f"| {d} | {a} | {solved or 'none'} | {ran} | "
                          f"{(paper or 'none') if d == 64 else '—'} |\n")
        out.write("\n## Setting 2: keys rewritten (L = 2S)\n\n")
        out.write("| key_size | model | rule | S | best eval loss (per seed) | paper |\n|---|---|---|---|---|---|\n")
        upd = [r for r in rows if r.get("setting") == 2 and "result.best_eval_loss" in r]
        groups = {}
        for r in upd:
            key = (r.get("key_size"), r.get("attention", "linear"), r.get("rule"), r["keys"])
            groups.setdefault(key, []).append(r["result.best_eval_loss"])
        for (d, a, rule, s), losses in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
            paper = PAPER_SETTING2.get((a, rule, s)) if d == 64 else None
            out.write(f"| {d} | {a} | {rule} | {s} | {', '.join(f'{x:.4g}' for x in losses)} | "
                      f"{paper if paper is not None else ''} |\n")
        out.write("\n## Every point\n\n<details><summary>the sweep_status rows</summary>\n\n```\n")
        for r in rows:
            out.write(json.dumps(r, sort_keys=True) + "\n")
        out.write("```\n</details>\n")
    print(f"wrote {page}" + "".join(f" and docs/results/{n}" for _, n in images))


def main():
    parser = argparse.ArgumentParser(prog="scripts/reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["retrieval"])
    parser.add_argument("--quick", action="store_true", help="a first look: fewer points, one seed (under 20 min)")
    parser.add_argument("--endpoint", default=os.environ.get("FWPCTL_ENDPOINT", "tcp://127.0.0.1:5555"))
    parser.add_argument("--events", default=os.environ.get("FWPCTL_EVENTS_ENDPOINT", "tcp://127.0.0.1:5556"))
    parser.add_argument("--state", default=os.path.join(ROOT, "var", "fwpd"),
                        help="fwpd's state folder, if this command starts it")
    args = parser.parse_args()
    client = ensure_daemon(args.endpoint, args.events, args.state)
    client.timeout = 30
    tag = "quick" if args.quick else "full"
    sweeps = []
    for name, preset, fixed, grid, seeds in retrieval_sweeps(args.quick):
        reply = client.sweep(preset=preset, parameters=fixed, grid=grid, seeds=seeds, max_running=2,
                             idempotency_key=f"reproduce-{args.experiment}-{tag}-{name}-v1")
        s = reply["sweep"]
        print(f"{'submitted' if reply['created'] else 'resuming'} sweep {s['id']} ({name}): {s['points']} points")
        sweeps.append(s)
    started = time.time()
    statuses = follow(client, sweeps)
    command = f"scripts/reproduce {args.experiment}" + (" --quick" if args.quick else "")
    write_retrieval(client, statuses, args.quick, time.time() - started, command)


if __name__ == "__main__":
    main()
