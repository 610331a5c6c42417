#!/usr/bin/env python3
"""Independent float64 reference for FWPCore, written from docs/MODEL.md with numpy only.

Writes fixtures into the folder given as the first argument:
  feature_maps.json   φ for ELU+1, SiLU, DPFP-1/2/3 and FAVOR+ on fixed inputs
  fast_weights.json   single-head fast-weight memories (sum/delta/gated delta rule, each normalisation)
  lm_*.safetensors    2-layer language models (float32 weights, fwp checkpoint metadata)
  lm_*.json           their tokens, targets and float64 mean cross-entropy

Run `make fixtures` to regenerate; the Swift tests compare against these files.
"""
import json
import os
import struct
import sys
import zlib

import numpy as np


# ---------------------------------------------------------------- feature maps
def elu_plus_one(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def dpfp(x, nu):
    xp = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=-1)
    # roll(x', j)[i] = x'[(i - j) mod 2d], which is numpy's roll by +j
    return np.concatenate([xp * np.roll(xp, j, axis=-1) for j in range(1, nu + 1)], axis=-1)


def favor(x, r):
    m = r.shape[0]
    a = x @ r.T
    base = -0.5 * np.sum(x * x, axis=-1, keepdims=True) - 0.5 * np.log(2 * m)
    return np.concatenate([np.exp(a + base), np.exp(-a + base)], axis=-1)


def phi(name, x, r=None):
    if name == "identity":
        return x
    if name == "elu":
        return elu_plus_one(x)
    if name == "silu":
        return x / (1 + np.exp(-x))
    kind, n = name.split("-")
    if kind == "dpfp":
        return dpfp(x, int(n))
    return favor(x, r)


def sum_norm(x):
    return x / (np.sum(x, axis=-1, keepdims=True) + 1e-6)


def l2_norm(x):
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + 1e-6)


def normalize(x, normalization):
    if normalization == "sum":
        return sum_norm(x)
    if normalization == "l2":
        return l2_norm(x)
    return x


def log_sigmoid(z):
    return -np.logaddexp(0, -z)


# ---------------------------------------------------------------- fast-weight memory
def memory(q, k, v, beta, rule, normalization, w0=None, z0=None, alpha=None):
    """q, k: T x d_dot (after φ and any normalisation); v: T x d_v; beta, alpha: T. Returns y, W, z."""
    t_len, dk = k.shape
    dv = v.shape[1]
    w = np.zeros((dv, dk)) if w0 is None else w0.copy()
    z = np.zeros(dk) if z0 is None else z0.copy()
    y = np.zeros((t_len, dv))
    for t in range(t_len):
        if rule == "delta":
            vbar = w @ k[t]
            w = w + beta[t] * np.outer(v[t] - vbar, k[t])
        elif rule == "gated-delta":
            # S_t = α_t S_{t-1} (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ, written as the matrix product
            w = alpha[t] * w @ (np.eye(len(k[t])) - beta[t] * np.outer(k[t], k[t])) + beta[t] * np.outer(v[t], k[t])
        else:
            w = w + np.outer(v[t], k[t])
        y[t] = w @ q[t]
        if normalization == "attention":
            z = z + k[t]
            y[t] = y[t] / (z @ q[t] + 1e-6)
    return y, w, z


def fast_weight_case(rng, rule, fmap, normalization, t_len=7, d=6):
    qr = rng.normal(size=(t_len, d))
    kr = rng.normal(size=(t_len, d))
    v = rng.normal(size=(t_len, d))
    beta = 1 / (1 + np.exp(-rng.normal(size=t_len)))
    alpha = np.exp(log_sigmoid(rng.normal(size=t_len) + 1.5))
    r = None
    if fmap.startswith("favor"):
        r = rng.normal(size=(int(fmap.split("-")[1]), d))
    q, k = normalize(phi(fmap, qr, r), normalization), normalize(phi(fmap, kr, r), normalization)
    y, _, _ = memory(q, k, v, beta, rule, normalization, alpha=alpha)
    case = dict(rule=rule, featureMap=fmap, normalization=normalization, q=qr.tolist(), k=kr.tolist(),
                v=v.tolist(), beta=beta.tolist(), y=y.tolist())
    if rule == "gated-delta":
        case["decay"] = alpha.tolist()
    if r is not None:
        case["projection"] = r.tolist()
    return case


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def recurrent_fast_net(net, z, rec, qx=None, kx=None, vx=None, bx=None, slow=None):
    """One head of a recurrent FWP over T steps from a zero state, as docs/MODEL.md writes it.

    delta-rnn / delta-lstm: z[g] (T x d) the delta memories' outputs per gate, rec[g] (T x 2d+1) the
    recurrent projection (r_k, r_v, r_beta) per gate. rdn: qx, kx, vx (T x d) and bx (T) from the
    input, slow the (3d+1) x d matrix [R_q; R_k; R_v; r_beta]. Returns y (T x d), before any scaling."""
    t_len = len(z[0]) if net != "rdn" else len(qx)
    d = z[0].shape[1] if net != "rdn" else qx.shape[1]
    y_prev, c = np.zeros(d), np.zeros(d)
    mats = [np.zeros((d, d)) for _ in range(3 if net == "delta-lstm" else 1)]
    ys = np.zeros((t_len, d))

    def program(m, key, value, b):  # the delta rule
        return m + b * np.outer(value - m @ key, key)

    for t in range(t_len):
        if net == "rdn":
            s = np.tanh(y_prev)
            pre = np.concatenate([qx[t], kx[t], vx[t], [bx[t]]]) + slow @ s
            q, k, v, b = softmax(pre[:d]), softmax(pre[d:2 * d]), pre[2 * d:3 * d], sigmoid(pre[3 * d])
            mats[0] = program(mats[0], k, v, b)
            y = mats[0] @ q
        else:
            f = softmax(y_prev)
            a = []
            for g, m in enumerate(mats):
                r = rec[g][t]
                mats[g] = program(m, softmax(r[:d]), r[d:2 * d], sigmoid(r[2 * d]))
                a.append(z[g][t] + mats[g] @ f)
            if net == "delta-rnn":
                y = a[0]
            else:
                i, u, o = sigmoid(a[0]), sigmoid(a[1]), sigmoid(a[2])
                c = i * u + (1 - i) * c
                y = o * c
        ys[t] = y
        y_prev = y
    return ys


# ---------------------------------------------------------------- language model
def layer_norm(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g + b


def positions(t_len, d, offset=0):
    pe = np.zeros((t_len, d))
    for t in range(t_len):
        for i in range(d // 2):
            f = 10000.0 ** (-2 * i / d)
            pe[t, 2 * i] = np.sin((offset + t) * f)
            pe[t, 2 * i + 1] = np.cos((offset + t) * f)
    return pe


def lm_logits(cfg, p, tokens):
    b_sz, t_len = tokens.shape
    d, h, dh = cfg["modelSize"], cfg["heads"], cfg["headSize"]
    x = p["embedding.weight"][tokens] * cfg.get("embeddingScale", 1.0)  # B x T x D
    if cfg["sinusoidalPositions"]:
        x = x + positions(t_len, d)[None]
    for i in range(cfg["layers"]):
        pre = f"layers.{i}"
        hn = layer_norm(x, p[f"{pre}.norm1.weight"], p[f"{pre}.norm1.bias"])
        qkv = hn @ p[f"{pre}.attn.qkv.weight"].T
        w_conv = cfg.get("shortConvolution", 0)
        if w_conv:
            # causal depthwise convolution over time per channel (zeros before the start), then SiLU
            cw = p[f"{pre}.attn.conv.weight"]  # 3·H·d × w
            padded = np.concatenate([np.zeros((b_sz, w_conv - 1, qkv.shape[-1])), qkv], axis=1)
            conv = sum(padded[:, j:j + t_len, :] * cw[:, j] for j in range(w_conv))
            qkv = conv / (1 + np.exp(-conv))
        net = cfg.get("fastNet", "linear")
        gates = 3 if net == "delta-lstm" else 1  # delta memories per head: heads g·H + h
        mh = gates * h
        q, k, v = [qkv[..., j * mh * dh:(j + 1) * mh * dh].reshape(b_sz, t_len, mh, dh) for j in range(3)]
        y = np.zeros((b_sz, t_len, mh, dh))
        if cfg["attention"] == "softmax":
            for b in range(b_sz):
                for hh in range(h):
                    s = q[b, :, hh] @ k[b, :, hh].T / np.sqrt(dh)
                    s = np.where(np.tril(np.ones((t_len, t_len))) > 0, s, -np.inf)
                    s = np.exp(s - s.max(-1, keepdims=True))
                    s = s / s.sum(-1, keepdims=True)
                    y[b, :, hh] = s @ v[b, :, hh]
        else:
            beta, alpha = None, None
            if cfg["updateRule"] in ("delta", "gated-delta"):
                beta = 1 / (1 + np.exp(-(hn @ p[f"{pre}.attn.beta.weight"].T + p[f"{pre}.attn.beta.bias"])))
            if cfg["updateRule"] == "gated-delta":
                alpha = np.exp(log_sigmoid(hn @ p[f"{pre}.attn.decay.weight"].T + p[f"{pre}.attn.decay.bias"]))
            r = p.get(f"{pre}.attn.favor_projection")
            for b in range(b_sz):
                for hh in range(mh):
                    qq, kk = phi(cfg["featureMap"], q[b, :, hh], r), phi(cfg["featureMap"], k[b, :, hh], r)
                    qq, kk = normalize(qq, cfg["normalization"]), normalize(kk, cfg["normalization"])
                    bb = beta[b, :, hh] if beta is not None else None
                    aa = alpha[b, :, hh] if alpha is not None else None
                    y[b, :, hh], _, _ = memory(qq, kk, v[b, :, hh], bb, cfg["updateRule"], cfg["normalization"],
                                               alpha=aa)
            if net != "linear":
                w_rec = p[f"{pre}.attn.recurrent.weight"]
                out = np.zeros((b_sz, t_len, h, dh))
                if net == "rdn":
                    logits = hn @ p[f"{pre}.attn.beta.weight"].T + p[f"{pre}.attn.beta.bias"]
                    for b in range(b_sz):
                        for hh in range(h):
                            out[b, :, hh] = recurrent_fast_net(
                                net, None, None, q[b, :, hh], k[b, :, hh], v[b, :, hh], logits[b, :, hh],
                                w_rec[hh * (3 * dh + 1):(hh + 1) * (3 * dh + 1)])
                else:
                    rec = (hn @ w_rec.T).reshape(b_sz, t_len, h, gates, 2 * dh + 1)
                    for b in range(b_sz):
                        for hh in range(h):
                            out[b, :, hh] = recurrent_fast_net(
                                net, [y[b, :, g * h + hh] for g in range(gates)],
                                [rec[b, :, hh, g] for g in range(gates)])
                y = out
            if cfg["scaleOutput"]:
                y = y / np.sqrt(dh)
        x = x + y.reshape(b_sz, t_len, h * dh) @ p[f"{pre}.attn.out.weight"].T
        hn = layer_norm(x, p[f"{pre}.norm2.weight"], p[f"{pre}.norm2.bias"])
        f = np.maximum(hn @ p[f"{pre}.ff.fc1.weight"].T + p[f"{pre}.ff.fc1.bias"], 0)
        x = x + f @ p[f"{pre}.ff.fc2.weight"].T + p[f"{pre}.ff.fc2.bias"]
    hn = layer_norm(x, p["norm.weight"], p["norm.bias"])
    w = p["embedding.weight"] if cfg["tiedEmbeddings"] else p["head.weight"]
    return hn @ w.T + p["head.bias"]


def cross_entropy(logits, targets):
    flat = logits.reshape(-1, logits.shape[-1])
    m = flat.max(-1, keepdims=True)
    lse = np.log(np.exp(flat - m).sum(-1)) + m[:, 0]
    return float(np.mean(lse - flat[np.arange(len(flat)), targets.reshape(-1)]))


def lm_parameters(cfg, rng):
    """Names and shapes as docs/MODEL.md lists them, in registration order."""
    d, h, dh, ff, vocab = cfg["modelSize"], cfg["heads"], cfg["headSize"], cfg["feedForwardSize"], cfg["vocabularySize"]
    shapes = [("embedding.weight", (vocab, d))]
    for i in range(cfg["layers"]):
        pre = f"layers.{i}"
        shapes += [(f"{pre}.norm1.weight", (d,)), (f"{pre}.norm1.bias", (d,)), (f"{pre}.attn.qkv.weight", (3 * h * dh, d))]
        if cfg.get("shortConvolution", 0):
            shapes.append((f"{pre}.attn.conv.weight", (3 * h * dh, cfg["shortConvolution"])))
        net = cfg.get("fastNet", "linear")
        mh = 3 * h if net == "delta-lstm" else h
        if net == "delta-lstm":
            shapes[-1] = (f"{pre}.attn.qkv.weight", (3 * mh * dh, d))
        if cfg["attention"] == "fast-weight" and cfg["updateRule"] in ("delta", "gated-delta"):
            shapes += [(f"{pre}.attn.beta.weight", (mh, d)), (f"{pre}.attn.beta.bias", (mh,))]
        if cfg["attention"] == "fast-weight" and cfg["updateRule"] == "gated-delta":
            shapes += [(f"{pre}.attn.decay.weight", (h, d)), (f"{pre}.attn.decay.bias", (h,))]
        if net == "rdn":
            shapes.append((f"{pre}.attn.recurrent.weight", (h * (3 * dh + 1), dh)))
        elif net != "linear":
            shapes.append((f"{pre}.attn.recurrent.weight", (h * (mh // h) * (2 * dh + 1), d)))
        shapes += [(f"{pre}.attn.out.weight", (d, h * dh)), (f"{pre}.norm2.weight", (d,)), (f"{pre}.norm2.bias", (d,)),
                   (f"{pre}.ff.fc1.weight", (ff, d)), (f"{pre}.ff.fc1.bias", (ff,)),
                   (f"{pre}.ff.fc2.weight", (d, ff)), (f"{pre}.ff.fc2.bias", (d,))]
    shapes += [("norm.weight", (d,)), ("norm.bias", (d,))]
    if not cfg["tiedEmbeddings"]:
        shapes.append(("head.weight", (vocab, d)))
    shapes.append(("head.bias", (vocab,)))
    params = {}
    for name, shape in shapes:
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            val = 1 + 0.2 * rng.normal(size=shape)
        else:
            val = 0.4 * rng.normal(size=shape)
        params[name] = val.astype(np.float32).astype(np.float64)  # exactly what the file stores
    buffers = {}
    if cfg["attention"] == "fast-weight" and cfg["featureMap"].startswith("favor"):
        m = int(cfg["featureMap"].split("-")[1])
        for i in range(cfg["layers"]):
            buffers[f"layers.{i}.attn.favor_projection"] = rng.normal(size=(m, dh)).astype(np.float32).astype(np.float64)
    return params, buffers


def write_safetensors(path, tensors, metadata):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors:
        raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    data = b"".join(blobs)
    metadata = dict(metadata, crc32="%08x" % (zlib.crc32(data) & 0xFFFFFFFF))
    header["__metadata__"] = metadata
    hb = json.dumps(header, sort_keys=True).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + data)


def lm_case(out, name, cfg, seed):
    rng = np.random.default_rng(seed)
    params, buffers = lm_parameters(cfg, rng)
    tokens = rng.integers(0, cfg["vocabularySize"], size=(2, 12))
    targets = rng.integers(0, cfg["vocabularySize"], size=(2, 12))
    loss = cross_entropy(lm_logits(cfg, {**params, **buffers}, tokens), targets)
    tensors = list(params.items()) + list(buffers.items())
    write_safetensors(os.path.join(out, f"lm_{name}.safetensors"), tensors,
                      {"format": "fwp.lm.v1", "config": json.dumps(cfg, sort_keys=True)})
    with open(os.path.join(out, f"lm_{name}.json"), "w") as f:
        json.dump({"tokens": tokens.reshape(-1).tolist(), "targets": targets.reshape(-1).tolist(), "batch": 2,
                   "loss": loss}, f)


def base_config(**kw):
    cfg = dict(vocabularySize=11, modelSize=8, layers=2, heads=2, headSize=4, feedForwardSize=12,
               attention="fast-weight", featureMap="elu", updateRule="delta", normalization="sum", dropout=0.0,
               tiedEmbeddings=False, sinusoidalPositions=False, scaleOutput=True, initStd=0.02)
    cfg.update(kw)
    return cfg


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "FWPCoreTests", "Fixtures")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20210211)
    x = rng.normal(size=(5, 8))
    r = rng.normal(size=(6, 8)) * 0.5
    fm = {"x": x.tolist(), "projection": r.tolist(),
          "outputs": {n: phi(n, x, r).tolist() for n in ["elu", "silu", "dpfp-1", "dpfp-2", "dpfp-3", "favor-6"]}}
    with open(os.path.join(out, "feature_maps.json"), "w") as f:
        json.dump(fm, f)
    cases = [fast_weight_case(rng, rule, fmap, norm) for rule, fmap, norm in [
        ("sum", "elu", "attention"), ("sum", "elu", "none"), ("sum", "dpfp-2", "sum"), ("sum", "favor-5", "attention"),
        ("delta", "elu", "sum"), ("delta", "dpfp-1", "none"), ("delta", "dpfp-3", "sum"), ("delta", "favor-4", "sum"),
        ("delta", "elu", "attention"), ("gated-delta", "silu", "l2"), ("gated-delta", "elu", "sum"),
        ("gated-delta", "identity", "l2"), ("delta", "silu", "l2")]]
    with open(os.path.join(out, "fast_weights.json"), "w") as f:
        json.dump(cases, f)
    lm_case(out, "delta_dpfp2", base_config(featureMap="dpfp-2"), 1)
    lm_case(out, "sum_elu_attention", base_config(updateRule="sum", normalization="attention", tiedEmbeddings=True), 2)
    lm_case(out, "softmax_positions", base_config(attention="softmax", sinusoidalPositions=True), 3)
    lm_case(out, "delta_favor3", base_config(featureMap="favor-3"), 4)
    # Scaled embeddings (√D in Transformer-XL-style code); 8 here moves the loss by 5%.
    lm_case(out, "softmax_scaled_embeddings",
            base_config(attention="softmax", sinusoidalPositions=True, embeddingScale=8.0), 5)
    lm_case(out, "gated_silu_l2", base_config(updateRule="gated-delta", featureMap="silu", normalization="l2"), 6)
    lm_case(out, "gated_conv_l2", base_config(updateRule="gated-delta", featureMap="identity", normalization="l2",
                                              shortConvolution=3), 7)
    lm_case(out, "delta_rnn", base_config(fastNet="delta-rnn"), 8)
    lm_case(out, "delta_lstm", base_config(fastNet="delta-lstm", featureMap="silu", normalization="l2"), 9)
    lm_case(out, "rdn", base_config(fastNet="rdn"), 10)


if __name__ == "__main__":
    main()
