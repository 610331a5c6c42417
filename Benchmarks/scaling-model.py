#!/usr/bin/env python3
"""The cost model of docs/SCALING.md: predicted data-parallel efficiency on N nodes.

Reads the figures Benchmarks/ranks measured on this machine (JSON lines, from a file or stdin),
checks the model against the two-rank runs measured there, and prints, for each model and
network, the predicted scaling efficiency at 2–64 nodes.

    Benchmarks/ranks 3 | tee docs/results/ranks.jsonl
    Benchmarks/scaling-model.py docs/results/ranks.jsonl [WORD_TOKENS_PER_SECOND]

WORD_TOKENS_PER_SECOND: lm-wikitext-small's training rate on this machine (one rank, all cores),
for its rows; docs/SCALING.md says how it was measured.

Model (one step, no overlap of communication and computation — fwp reduces after backward):
    compute(N)  = (T1 − U) · Lmax(N) / batch + U
                                             Lmax: the largest rank's sequences under fwp's
                                             shard layout and assignment (imbalance included);
                                             U: the AdamW update, which every rank does in full
                                             (measured per parameter in the 2-rank runs)
    reduce(N)   = 2·G/BW + (N−1)·(α + c/BW) + ⌈log2 N⌉·α
                  the ordered chain (each piece of c bytes crosses N−1 links, pipelined) and
                  the broadcast of the total (pipelined tree)
    ring(N)     = 2·(N−1)/N · G/BW + 2·(N−1)·α   (a ring allreduce over an even split, for comparison)
    efficiency  = T1 / (N · (compute(N) + reduce(N)))     T1: the step on one node (1 rank × its cores)
G = 4 bytes × parameters, BW = 90 % of the link rate, α = 10 µs per message over TCP.
"""
import json
import math
import sys

PIECE = 4 * (1 << 16)  # bytes per chain message (DataParallel.pieceSize floats)


def layout(batch):
    """fwp's ShardLayout: blocks of 16 sequences, 4,3,3,2,2,1,1 sixteenths of each."""
    bounds, start = [0], 0
    while start < batch:
        size = min(16, batch - start)
        for s in [4, 7, 10, 12, 14, 15, 16]:
            b = start + (size * s + 8) // 16
            if bounds[-1] != b:
                bounds.append(b)
        start += size
    return [b - a for a, b in zip(bounds, bounds[1:])]


def largest_load(sizes, ranks):
    """DataParallel.assignment's largest run (None when there are fewer shards than ranks)."""
    n = len(sizes)
    if ranks > n:
        return None

    def fits(limit):
        start = 0
        for r in range(ranks):
            end, load = start + 1, sizes[start]
            while end < n - (ranks - r - 1) and (r == ranks - 1 or load + sizes[end] <= limit):
                load += sizes[end]
                end += 1
            if load > limit:
                return False
            start = end
        return start == n

    low, high = max(sizes), sum(sizes)
    while low < high:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid + 1
    return low


def reduce_seconds(n, g, bw, alpha):
    if n == 1:
        return 0.0
    return 2 * g / bw + (n - 1) * (alpha + PIECE / bw) + math.ceil(math.log2(n)) * alpha


def ring_seconds(n, g, bw, alpha):
    return 0.0 if n == 1 else 2 * (n - 1) / n * g / bw + 2 * (n - 1) * alpha


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    lines = [json.loads(l) for l in (open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin) if l.strip()]
    runs = [l for l in lines if "workload" in l]
    reduce = {l["name"]: l for l in lines if l.get("name", "").startswith("reduce")}

    def pick(workload, ranks, threads, key="tokens_per_second"):
        return median([r[key] for r in runs
                       if r["workload"] == workload and r["ranks"] == ranks and r["threads_per_rank"] == threads])

    # The workloads Benchmarks/ranks runs: (parameters, batch, tokens per step).
    shapes = {"small": (462_600, 16, 16 * 128), "paper": (9_562_752, 16, 16 * 256)}
    chain = {v["floats"]: v["seconds"] for k, v in reduce.items() if k.startswith("reduce-chain")}
    print("## Measured here (medians), and the model's two-rank step\n")
    print("| workload | 1×1 tok/s | 1×2 tok/s | 2×1 tok/s | 2×1 / 1×2 | update U | reduction R | "
          "model 2×1 tok/s | model / measured |")
    print("|---|---|---|---|---|---|---|---|---|")
    update_per_parameter = []
    for w, (params, batch, tokens) in shapes.items():
        one, two_threads, two_ranks = pick(w, 1, 1), pick(w, 1, 2), pick(w, 2, 1)
        u = pick(w, 2, 1, "update_seconds_per_step")  # one thread's AdamW update, which every rank repeats
        update_per_parameter.append(u / params)
        t1 = tokens / one
        r = chain[params]  # the reduction of this gradient, measured alone
        step = (t1 - u) * largest_load(layout(batch), 2) / batch + u + r
        print(f"| {w} | {one:,} | {two_threads:,} | {two_ranks:,} | {two_ranks / two_threads:.2f} | "
              f"{u * 1e3:.1f} ms | {r * 1e3:.1f} ms | {tokens / step:,.0f} | {tokens / step / two_ranks:.2f} |")
    u_per_parameter = max(update_per_parameter)
    print(f"\nThe update per parameter on one thread: {', '.join(f'{x * 1e9:.1f} ns' for x in update_per_parameter)}"
          f" (the predictions use {u_per_parameter * 1e9:.1f} ns, divided among a node's threads).")

    # Prediction past this machine: a node runs one rank on all its cores.
    word_params = 78_305_369  # lm-wikitext-small on WikiText-103 (267,737 tokens, untied embeddings)
    models = [
        ("lm-bytes-small (0.46M parameters, batch 16×128)", 462_600, 16, 16 * 128 / pick("small", 1, 2)),
        ("paper small shape, bytes (9.6M, batch 16×256)", 9_562_752, 16, 16 * 256 / pick("paper", 1, 2)),
    ]
    if len(sys.argv) > 2:  # argv[2]: lm-wikitext-small's tokens/s here (one rank, all cores)
        for batch in (96, 192):
            models.append((f"lm-wikitext-small (78M, batch {batch}×256)", word_params, batch,
                           batch * 256 / float(sys.argv[2])))
    nodes = [2, 4, 8, 16, 32, 64]
    threads_here = 2
    for speedup, gbps in [(1, 10), (1, 25), (1, 100), (16, 10), (16, 25), (16, 100)]:
        bw = gbps / 8 * 1e9 * 0.9
        kind = "nodes like this one (2 cores)" if speedup == 1 else f"nodes {speedup}× faster (32 cores)"
        print(f"\n## {gbps} Gb/s, {kind}: predicted efficiency (ring allreduce in brackets)\n")
        print("| model | step on 1 node | " + " | ".join(f"N={n}" for n in nodes) + " |")
        print("|---|---|" + "---|" * len(nodes))
        for name, params, batch, t1 in models:
            t1 = t1 / speedup
            u = u_per_parameter * params / threads_here / speedup
            g = 4 * params
            cells = []
            for n in nodes:
                load = largest_load(layout(batch), n)
                if load is None:
                    cells.append("—")
                    continue
                compute = (t1 - u) * load / batch + u
                eff = t1 / (n * (compute + reduce_seconds(n, g, bw, 10e-6)))
                ring = t1 / (n * ((t1 - u) / n + u + ring_seconds(n, g, bw, 10e-6)))
                cells.append(f"{eff:.0%} ({ring:.0%})")
            print(f"| {name} | {t1:.3g} s | " + " | ".join(cells) + " |")


main()
