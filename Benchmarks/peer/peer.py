#!/usr/bin/env python3
"""PyTorch peer of fwp-bench: the same workloads, written from docs/MODEL.md, in eager PyTorch.

    Benchmarks/peer/.venv/bin/python Benchmarks/peer/peer.py --threads 2 [--only layer|lm|sweep|decode] [--json]
        [--model-size D --layers L --heads H --ff F --batch B --context T]   # the lm workload's shape
    Benchmarks/peer/.venv/bin/python Benchmarks/peer/peer.py --check      # chunkwise == recurrence

Workloads (tokens/s, median of --repeats after one warm-up):
  layer  the delta-rule memory alone, forward + backward, B=8 H=4 T=256 d=64: q, k (ELU+1 then
         sum-normalised), v, beta -> y; as a per-step loop and in the chunkwise (WY) form.
  lm     one training step (forward, backward, AdamW) of the byte-level LM: D=128, 4 pre-LN
         blocks, 4 heads of 32, FF 512, T=256, B=16, ELU+1 with sum normalisation, 1/sqrt(d)
         output scale; delta rule (chunkwise), sum rule (chunkwise linear attention), softmax
         (scaled_dot_product_attention, causal), gated delta rule (chunkwise, decay = sigmoid of
         a linear map of the block's input, per head).
         --model-size, --layers, --heads (head size D / H), --ff, --batch, --context give it
         another shape; its rows are then named lm-<kind>-D<D>L<L>.
  sweep  the lm step at T = 256 ... 8192 with B*T fixed at 4096 tokens (B >= 1).
  decode one generated token per sequence (no gradients) at batch 1 and 16, with 1K and 64K
         tokens of context: the fast-weight kinds as a recurrent step on their d x d states,
         softmax on a key/value cache preallocated for the whole run (no copying) through
         scaled_dot_product_attention. The state at context T is random of the right size (a
         step's cost does not depend on the values); tokens/s = B / seconds per step.
Not part of the test suite.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def feature(x):
    """ELU+1 then sum normalisation (docs/MODEL.md)."""
    p = F.elu(x) + 1
    return p / (p.sum(-1, keepdim=True) + 1e-6)


def delta_loop(q, k, v, beta):
    """Reference recurrence, one step at a time. q, k, v: (B, H, T, d); beta: (B, H, T)."""
    B, H, T, d = q.shape
    W = q.new_zeros(B, H, v.shape[-1], d)
    ys = []
    for t in range(T):
        kt, qt = k[:, :, t], q[:, :, t]
        vbar = torch.einsum("bhij,bhj->bhi", W, kt)
        u = beta[:, :, t, None] * (v[:, :, t] - vbar)
        W = W + u[..., :, None] * kt[..., None, :]
        ys.append(torch.einsum("bhij,bhj->bhi", W, qt))
    return torch.stack(ys, 2)


def delta_chunk(q, k, v, beta, chunk=64):
    """Chunkwise delta rule (WY / UT form): rank-1 updates within a chunk become matrix products.

    With L = strictly-lower(diag(beta) K K^T), A = (I + L)^-1 diag(beta), W = A K, U = A V, the
    values actually written in a chunk starting from state S are U - W S^T, and the outputs are
    Q S^T + causal(Q K^T) (U - W S^T)."""
    B, H, T, d = q.shape
    dv = v.shape[-1]
    C = min(chunk, T)
    assert T % C == 0
    n = T // C
    q, k, v = (x.reshape(B, H, n, C, x.shape[-1]) for x in (q, k, v))
    beta = beta.reshape(B, H, n, C)
    eye = torch.eye(C, dtype=q.dtype)
    L = (beta[..., None] * (k @ k.transpose(-1, -2))).tril(-1)
    A = torch.linalg.solve_triangular(eye + L, torch.diag_embed(beta), upper=False)
    Wm, U = A @ k, A @ v
    causal = torch.ones(C, C, dtype=torch.bool).tril()
    S = q.new_zeros(B, H, dv, d)
    out = []
    for i in range(n):
        u = U[:, :, i] - Wm[:, :, i] @ S.transpose(-1, -2)
        qi, ki = q[:, :, i], k[:, :, i]
        att = (qi @ ki.transpose(-1, -2)).masked_fill(~causal, 0)
        out.append(qi @ S.transpose(-1, -2) + att @ u)
        S = S + u.transpose(-1, -2) @ ki
    return torch.stack(out, 2).reshape(B, H, T, dv)


def gated_loop(q, k, v, beta, log_decay):
    """Gated delta rule, one step at a time: W_t = a_t W_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T."""
    B, H, T, d = q.shape
    W = q.new_zeros(B, H, v.shape[-1], d)
    ys = []
    for t in range(T):
        kt, qt, a = k[:, :, t], q[:, :, t], log_decay[:, :, t, None].exp()
        vbar = torch.einsum("bhij,bhj->bhi", W, kt)
        u = beta[:, :, t, None] * (v[:, :, t] - a * vbar)
        W = a[..., None] * W + u[..., :, None] * kt[..., None, :]
        ys.append(torch.einsum("bhij,bhj->bhi", W, qt))
    return torch.stack(ys, 2)


def gated_chunk(q, k, v, beta, log_decay, chunk=64):
    """Chunkwise gated delta rule (docs/MODEL.md): with g the within-chunk cumulative log decay,
    G[t, s] = exp(g_t - g_s) (s <= t), L = strictly-lower(diag(beta) (G * K K^T)),
    A = (I + L)^-1 diag(beta), a chunk from state S writes U = A (V - exp(g) * K S^T), outputs
    exp(g) * Q S^T + (G * causal(Q K^T)) U, and ends at exp(g_last) S + (exp(g_last - g) * U)^T K."""
    B, H, T, d = q.shape
    dv = v.shape[-1]
    C = min(chunk, T)
    assert T % C == 0
    n = T // C
    q, k, v = (x.reshape(B, H, n, C, x.shape[-1]) for x in (q, k, v))
    beta = beta.reshape(B, H, n, C)
    g = log_decay.reshape(B, H, n, C).cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool).tril()
    gamma = (g[..., :, None] - g[..., None, :]).masked_fill(~causal, -math.inf).exp()
    eye = torch.eye(C, dtype=q.dtype)
    L = (beta[..., None] * gamma * (k @ k.transpose(-1, -2))).tril(-1)
    A = torch.linalg.solve_triangular(eye + L, torch.diag_embed(beta), upper=False)
    decay, last = g.exp()[..., None], (g[..., -1:] - g).exp()[..., None]
    S = q.new_zeros(B, H, dv, d)
    out = []
    for i in range(n):
        qi, ki = q[:, :, i], k[:, :, i]
        u = A[:, :, i] @ (v[:, :, i] - decay[:, :, i] * (ki @ S.transpose(-1, -2)))
        att = gamma[:, :, i] * (qi @ ki.transpose(-1, -2))
        out.append(decay[:, :, i] * (qi @ S.transpose(-1, -2)) + att @ u)
        S = decay[:, :, i, -1:] * S + (last[:, :, i] * u).transpose(-1, -2) @ ki
    return torch.stack(out, 2).reshape(B, H, T, dv)


def linear_chunk(q, k, v, chunk=64):
    """Causal linear attention (sum rule) in chunks: inter-chunk state plus causal intra-chunk."""
    B, H, T, d = q.shape
    C = min(chunk, T)
    n = T // C
    q, k, v = (x.reshape(B, H, n, C, x.shape[-1]) for x in (q, k, v))
    causal = torch.ones(C, C, dtype=torch.bool).tril()
    S = q.new_zeros(B, H, v.shape[-1], d)
    out = []
    for i in range(n):
        qi, ki, vi = q[:, :, i], k[:, :, i], v[:, :, i]
        att = (qi @ ki.transpose(-1, -2)).masked_fill(~causal, 0)
        out.append(qi @ S.transpose(-1, -2) + att @ vi)
        S = S + vi.transpose(-1, -2) @ ki
    return torch.stack(out, 2).reshape(B, H, T, -1)


class Block(nn.Module):
    def __init__(self, D, H, d, Fh, kind, rule):
        super().__init__()
        self.H, self.d, self.kind, self.rule = H, d, kind, rule
        self.norm1 = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * H * d, bias=False)
        self.beta = nn.Linear(D, H) if (kind == "fast-weight" and rule in ("delta", "gated")) else None
        self.decay = nn.Linear(D, H) if (kind == "fast-weight" and rule == "gated") else None
        self.out = nn.Linear(H * d, D, bias=False)
        self.norm2 = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, Fh)
        self.fc2 = nn.Linear(Fh, D)

    def attention(self, h):
        B, T, _ = h.shape
        q, k, v = self.qkv(h).view(B, T, 3, self.H, self.d).permute(2, 0, 3, 1, 4)
        if self.kind == "softmax":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            q, k = feature(q), feature(k)
            if self.rule == "delta":
                beta = torch.sigmoid(self.beta(h)).transpose(1, 2)
                y = delta_chunk(q, k, v, beta)
            elif self.rule == "gated":
                beta = torch.sigmoid(self.beta(h)).transpose(1, 2)
                y = gated_chunk(q, k, v, beta, F.logsigmoid(self.decay(h)).transpose(1, 2))
            else:
                y = linear_chunk(q, k, v)
            y = y / math.sqrt(self.d)
        return self.out(y.transpose(1, 2).reshape(B, T, self.H * self.d))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.relu(self.fc1(self.norm2(x))))


class LM(nn.Module):
    def __init__(self, kind, rule, V=256, D=128, L=4, H=4, d=32, Fh=512):
        super().__init__()
        self.embedding = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(Block(D, H, d, Fh, kind, rule) for _ in range(L))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, V)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens):
        x = self.embedding(tokens)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_layer(repeats, mode):
    B, H, T, d = 8, 4, 256, 64
    g = torch.Generator().manual_seed(1)
    raw = [torch.randn(B, H, T, d, generator=g) for _ in range(3)]
    braw = torch.randn(B, H, T, generator=g)

    def step():
        qr, kr, v = (x.clone().requires_grad_() for x in raw)
        b = braw.clone().requires_grad_()
        q, k, beta = feature(qr), feature(kr), torch.sigmoid(b)
        y = delta_loop(q, k, v, beta) if mode == "loop" else delta_chunk(q, k, v, beta)
        y.backward(y.detach())

    return B * T / median_time(step, repeats)


def bench_lm(repeats, kind, rule, B=16, T=256, shape=None):
    torch.manual_seed(1)
    model = LM(kind, rule, **(shape or {}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0)
    tokens = torch.randint(0, 256, (B, T))
    targets = (tokens + 1) % 256

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tokens).reshape(-1, 256), targets.reshape(-1))
        loss.backward()
        opt.step()

    return B * T / median_time(step, repeats)


@torch.no_grad()
def decode_step(model, tokens, state, pos):
    """One token per sequence through the LM (B,) -> logits (B, V), updating `state` in place:
    per block the fast weights (B, H, d, d) or the key and value caches (B, H, capacity, d)."""
    x = model.embedding(tokens)
    B = x.shape[0]
    for blk, st in zip(model.blocks, state):
        h = blk.norm1(x)
        q, k, v = blk.qkv(h).view(B, 3, blk.H, blk.d).unbind(1)
        if blk.kind == "softmax":
            K, V = st
            K[:, :, pos] = k
            V[:, :, pos] = v
            y = F.scaled_dot_product_attention(q[:, :, None], K[:, :, : pos + 1], V[:, :, : pos + 1])[:, :, 0]
        else:
            W = st
            q, k = feature(q), feature(k)
            if blk.rule == "sum":
                W.add_(v[..., :, None] * k[..., None, :])
            else:
                retrieved = (W @ k[..., None])[..., 0]
                beta = torch.sigmoid(blk.beta(h))[..., None]
                if blk.rule == "gated":
                    a = torch.sigmoid(blk.decay(h))[..., None]
                    u = beta * (v - a * retrieved)
                    W.mul_(a[..., None]).add_(u[..., :, None] * k[..., None, :])
                else:
                    W.add_((beta * (v - retrieved))[..., :, None] * k[..., None, :])
            y = (W @ q[..., None])[..., 0] / math.sqrt(blk.d)
        x = x + blk.out(y.reshape(B, blk.H * blk.d))
        x = x + blk.fc2(F.relu(blk.fc1(blk.norm2(x))))
    return model.head(model.norm(x))


def bench_decode(repeats, kind, rule, B, context, window):
    """Tokens/s of `decode_step` at batch B after `context` tokens: median over `repeats` windows."""
    torch.manual_seed(1)
    model = LM(kind, rule).eval()
    g = torch.Generator().manual_seed(2)
    capacity = context + 4 + (repeats + 1) * window
    H, d = model.blocks[0].H, model.blocks[0].d
    if kind == "softmax":
        state = [tuple(torch.randn(B, H, capacity, d, generator=g) for _ in range(2)) for _ in model.blocks]
    else:
        state = [0.1 * torch.randn(B, H, d, d, generator=g) for _ in model.blocks]
    tokens, pos = torch.ones(B, dtype=torch.long), context
    times = []
    for w in range(repeats + 1):
        t0 = time.perf_counter()
        for _ in range(window if w else 4):
            tokens = decode_step(model, tokens, state, pos).argmax(-1)
            pos += 1
        if w:
            times.append(time.perf_counter() - t0)
    return B * window / statistics.median(times)


def check():
    torch.manual_seed(0)
    B, H, T, d = 2, 3, 48, 8
    q, k = feature(torch.randn(B, H, T, d, dtype=torch.float64)), feature(torch.randn(B, H, T, d, dtype=torch.float64))
    v, beta = torch.randn(B, H, T, d, dtype=torch.float64), torch.rand(B, H, T, dtype=torch.float64)
    a, b = delta_loop(q, k, v, beta), delta_chunk(q, k, v, beta, chunk=16)
    err = (a - b).abs().max().item()
    sa = delta_loop(q, k, v, torch.ones_like(beta))
    print(f"chunkwise vs recurrence max |diff| = {err:.2e}")
    lin = linear_chunk(q, k, v, chunk=16)
    ref = torch.einsum("bhts,bhsd->bhtd", (q @ k.transpose(-1, -2)).tril(), v)
    err2 = (lin - ref).abs().max().item()
    print(f"chunked linear attention vs quadratic max |diff| = {err2:.2e}")
    del sa
    la = F.logsigmoid(torch.randn(B, H, T, dtype=torch.float64) + 1)
    err3 = (gated_loop(q, k, v, beta, la) - gated_chunk(q, k, v, beta, la, chunk=16)).abs().max().item()
    print(f"chunkwise gated delta rule vs recurrence max |diff| = {err3:.2e}")
    # The decode step, from an empty state, gives the training forward's logits.
    err4 = 0.0
    tokens = torch.randint(0, 256, (2, 12))
    for kind, rule in (("fast-weight", "delta"), ("fast-weight", "sum"), ("softmax", "sum"), ("fast-weight", "gated")):
        torch.manual_seed(3)
        model = LM(kind, rule).double().eval()
        for p in model.parameters():  # larger weights than the init, so that every part matters
            p.data.normal_(0, 0.3)
        H, d = model.blocks[0].H, model.blocks[0].d
        zeros = lambda *s: torch.zeros(*s, dtype=torch.float64)
        state = [(zeros(2, H, 12, d), zeros(2, H, 12, d)) if kind == "softmax" else zeros(2, H, d, d) for _ in model.blocks]
        with torch.no_grad():
            full = model(tokens)
            steps = torch.stack([decode_step(model, tokens[:, t], state, t) for t in range(12)], 1)
        err4 = max(err4, ((full - steps).abs().max() / full.abs().max()).item())
    print(f"decode step vs training forward max relative |diff| = {err4:.2e}")
    return err < 1e-10 and err2 < 1e-10 and err3 < 1e-10 and err4 < 1e-10


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", choices=["layer", "lm", "sweep", "decode"])
    ap.add_argument("--model-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ff", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--check", action="store_true", help="check the chunkwise forms against the recurrence")
    args = ap.parse_args()
    if args.check:
        sys.exit(0 if check() else 1)
    torch.set_num_threads(args.threads)
    results = []
    if args.only in (None, "layer"):
        results.append(("layer-chunk", bench_layer(args.repeats, "chunk")))
        results.append(("layer-loop", bench_layer(max(1, args.repeats // 2), "loop")))
    kinds = (("delta", "fast-weight", "delta"), ("sum", "fast-weight", "sum"), ("softmax", "softmax", "sum"),
             ("gated", "fast-weight", "gated"))
    if args.only in (None, "lm"):
        D, L, H = args.model_size, args.layers, args.heads
        shape = dict(D=D, L=L, H=H, d=D // H, Fh=args.ff)
        suffix = "" if (D, L, H, args.ff) == (128, 4, 4, 512) else f"-D{D}L{L}"
        for name, kind, rule in kinds:
            tps = bench_lm(args.repeats, kind, rule, B=args.batch, T=args.context, shape=shape)
            results.append((f"lm-{name}{suffix}", tps))
    if args.only == "sweep":
        for T in (256, 512, 1024, 2048, 4096, 8192):
            for name, kind, rule in kinds[:3]:
                results.append((f"lm-{name}-T{T}", bench_lm(args.repeats, kind, rule, B=max(1, 4096 // T), T=T)))
    if args.only == "decode":
        for name, kind, rule in kinds:
            for B in (1, 16):
                for T in (1024, 65536):
                    window = 256 if B == 1 else 32
                    results.append((f"decode-{name}-B{B}-T{T}", bench_decode(args.repeats, kind, rule, B, T, window)))
    for name, tps in results:
        if args.json:
            print(json.dumps({"name": name, "tokens_per_s": round(tps, 1), "threads": args.threads, "torch": torch.__version__}))
        else:
            print(f"{name:20s} {tps:12.0f} tokens/s  (torch {torch.__version__}, {args.threads} threads)")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
