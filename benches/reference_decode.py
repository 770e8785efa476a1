#!/usr/bin/env python3
"""Plain-numpy reference for `azr bench generate`: a Qwen2/Llama decoder (float32, KV cache)
timed with the same protocol as src/bench/generate.rs, so the Rust figures can be judged
against what numpy + its BLAS reach on the same CPU.

    python3 benches/reference_decode.py MODEL_DIR [--batch 1,8] [--prompt-tokens 128]
                                        [--new-tokens 32] [--check]

MODEL_DIR is a Hugging Face folder (config.json + model.safetensors), e.g.
/root/.cache/azr/models/smollm2-135m-instruct. Only numpy is needed (no torch, no
safetensors). This machine's system python3 has no numpy, so it was run from a venv:

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install numpy
    /tmp/refvenv/bin/python benches/reference_decode.py MODEL_DIR

--check greedy-decodes 16 tokens from fixed prompt ids at batch 1 instead of timing.
Set OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS) to pin the BLAS thread count.
"""

import argparse
import ctypes
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def load_safetensors(path):
    """name -> float32 array. The file is a u64 header length, a JSON header, then raw bytes."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    (n,) = struct.unpack("<Q", raw[:8].tobytes())
    header = json.loads(raw[8:8 + n].tobytes())
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        a = raw[base + start:base + end].view(DTYPES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            # bf16 is the top half of an f32: shift into place and reinterpret.
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = np.asarray(a, dtype=np.float32)
    return out


class Model:
    def __init__(self, folder):
        folder = Path(folder)
        c = json.loads((folder / "config.json").read_text())
        w = load_safetensors(folder / "model.safetensors")
        self.heads, self.kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
        self.hidden = c["hidden_size"]
        self.d = c.get("head_dim") or self.hidden // self.heads
        self.eps = c["rms_norm_eps"]
        self.embed = np.ascontiguousarray(w["model.embed_tokens.weight"])
        self.vocab = self.embed.shape[0]
        # (in, out) contiguous once at load, so every matmul is x @ W with no per-call repacking
        # (the Rust side stores its Linear weights the same way).
        t = lambda a: np.ascontiguousarray(a.T)
        self.lm_head = t(w.get("lm_head.weight", self.embed))
        self.norm = w["model.norm.weight"]
        self.layers = []
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            # Qwen2 has q/k/v biases, Llama has none; the tensors themselves say which.
            self.layers.append({
                "ln1": w[p + "input_layernorm.weight"],
                "ln2": w[p + "post_attention_layernorm.weight"],
                **{k: t(w[a + k + "_proj.weight"]) for k in "qkvo"},
                **{k + "b": w.get(a + k + "_proj.bias") for k in "qkv"},
                "gate": t(w[p + "mlp.gate_proj.weight"]),
                "up": t(w[p + "mlp.up_proj.weight"]),
                "down": t(w[p + "mlp.down_proj.weight"]),
            })
        inv_freq = 1.0 / c["rope_theta"] ** (np.arange(0, self.d, 2, dtype=np.float64) / self.d)
        angles = np.outer(np.arange(c["max_position_embeddings"]), inv_freq)
        self.cos, self.sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

    def rms_norm(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def rope(self, x, pos):
        # HF "rotate_half": the two halves of head_dim form the (re, im) pairs.
        cos, sin = self.cos[pos], self.sin[pos]  # (t, d/2), broadcast over (b, heads)
        x1, x2 = x[..., : self.d // 2], x[..., self.d // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def forward(self, ids, cache):
        """ids (b, t) -> final-normed hidden (b, t, hidden); appends to `cache` (a list)."""
        b, t = ids.shape
        offset = cache[0][0].shape[2] if cache else 0
        pos = np.arange(offset, offset + t)
        total, rep = offset + t, self.heads // self.kv_heads
        # Causal additive mask; a single new token sees every cached key, so none is needed.
        mask = None
        if t > 1:
            mask = np.where(pos[:, None] >= np.arange(total)[None, :], 0.0, -1e9).astype(np.float32)
        x = self.embed[ids]
        for i, L in enumerate(self.layers):
            h = self.rms_norm(x, L["ln1"]).reshape(b * t, self.hidden)
            q, k, v = (h @ L[n] + L[n + "b"] if L[n + "b"] is not None else h @ L[n] for n in "qkv")
            q = self.rope(q.reshape(b, t, self.heads, self.d).transpose(0, 2, 1, 3), pos)
            k = self.rope(k.reshape(b, t, self.kv_heads, self.d).transpose(0, 2, 1, 3), pos)
            v = v.reshape(b, t, self.kv_heads, self.d).transpose(0, 2, 1, 3)
            # Grow the cache by concatenation, as the Rust KvCache does (Tensor::cat per step).
            if len(cache) > i:
                k = np.concatenate([cache[i][0], k], axis=2)
                v = np.concatenate([cache[i][1], v], axis=2)
                cache[i] = (k, v)
            else:
                cache.append((k, v))
            # GQA without copying K/V: fold each group's `rep` query heads into the row axis.
            # A Python float, not np.sqrt: a numpy f64 scalar would promote everything to f64.
            qg = (q * (1.0 / math.sqrt(self.d))).reshape(b, self.kv_heads, rep * t, self.d)
            s = (qg @ k.transpose(0, 1, 3, 2)).reshape(b, self.kv_heads, rep, t, total)
            if mask is not None:
                s = s + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            o = (s.reshape(b, self.kv_heads, rep * t, total) @ v).reshape(b, self.heads, t, self.d)
            o = o.transpose(0, 2, 1, 3).reshape(b * t, self.heads * self.d)
            x = x + (o @ L["o"]).reshape(b, t, self.hidden)
            h = self.rms_norm(x, L["ln2"]).reshape(b * t, self.hidden)
            g = h @ L["gate"]
            mlp = (g / (1.0 + np.exp(-g))) * (h @ L["up"])
            x = x + (mlp @ L["down"]).reshape(b, t, self.hidden)
        assert x.dtype == np.float32, x.dtype  # any stray f64 promotion would skew the timings
        return self.rms_norm(x, self.norm)

    def logits(self, hidden):
        b, t, h = hidden.shape
        return (hidden.reshape(b * t, h) @ self.lm_head).reshape(b, t, -1)


def measure(model, b, prompt, new):
    """Mirrors `measure` in src/bench/generate.rs: fixed ids, no sampling, same work each run."""
    vocab = model.vocab
    ids = ((np.arange(b * prompt, dtype=np.int64) * 7919) % vocab).reshape(b, prompt)
    cache = []
    start = time.perf_counter()
    hidden = model.forward(ids, cache)
    model.logits(hidden[:, prompt - 1:prompt])
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(new):
        nxt = ((np.arange(b) * 31 + step) % vocab).reshape(b, 1)
        model.logits(model.forward(nxt, cache))
    decode = time.perf_counter() - start
    return b * prompt / prefill, b * new / decode, 1e3 * decode / new


def blas_summary():
    """Which BLAS numpy was built with, and how many threads it will use."""
    name = "unknown"
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]
        name = f"{deps['blas']['name']} {deps['blas'].get('version', '')}".strip()
    except Exception:
        pass
    threads = None
    # OpenBLAS reports its own pool size; find the loaded library among the process's mappings.
    try:
        libs = {l.split()[-1] for l in open("/proc/self/maps") if "openblas" in l.lower()}
        for lib in libs:
            dll = ctypes.CDLL(lib)
            for sym in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                        "openblas_get_num_threads"):
                if hasattr(dll, sym):
                    threads = getattr(dll, sym)()
                    break
    except Exception:
        pass
    if threads is None:
        threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") \
            or f"{os.cpu_count()} (cpu count; not queried)"
    return f"numpy {np.__version__}, BLAS {name}, {threads} threads"


def check(model):
    """Greedy decode at batch 1 from ids valid in both the SmolLM2 and Qwen2.5 vocabularies."""
    prompt = np.array([[9707, 11, 1879, 0]])
    cache = []
    logits = model.logits(model.forward(prompt, cache)[:, -1:])
    print("top-1 after prompt:", int(logits[0, -1].argmax()))
    out = []
    for _ in range(16):
        out.append(int(logits[0, -1].argmax()))
        logits = model.logits(model.forward(np.array([[out[-1]]]), cache))
    print("greedy:", json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--batch", default="1,8", help="comma-separated; the first is the reference")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--check", action="store_true", help="print a greedy decode instead of timing")
    args = ap.parse_args()
    model = Model(args.model_dir)
    if args.check:
        check(model)
        return
    batches = [int(x) for x in args.batch.split(",") if x]
    if not batches or args.prompt_tokens < 1 or args.new_tokens < 1:
        sys.exit("--batch needs a size; --prompt-tokens and --new-tokens must be at least 1")
    measure(model, 1, 8, 2)  # warm-up: page in the weights, let BLAS start its threads
    rows = [(b, *measure(model, b, args.prompt_tokens, args.new_tokens)) for b in batches]
    print(f"model {args.model_dir} (f32, numpy), prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} decoded; {blas_summary()}")
    print(f"| batch | prefill tok/s | decode tok/s | ms / decode step | decode vs batch {batches[0]} |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for b, pre, dec, ms in rows:
        print(f"| {b} | {pre:.0f} | {dec:.1f} | {ms:.0f} | {dec / rows[0][2]:.2f}x |")


if __name__ == "__main__":
    main()
