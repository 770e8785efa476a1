#!/usr/bin/env python3
"""PyTorch + transformers reference for `azr bench generate` and `azr bench update`: the same
model folder, the same token ids and the same protocol as src/bench/{generate,update}.rs.

    python benches/reference_torch.py generate MODEL_DIR [--dtype f32|bf16] [--batch 1,8]
                                      [--prompt-tokens 128] [--new-tokens 32]
    python benches/reference_torch.py update MODEL_DIR [--dtype f32|bf16] [--sequences 8]
                                      [--prompt-tokens 128] [--completion-tokens 128]

benches/compare_torch.sh runs azr and this script back to back on one model and prints both,
which is how BENCHMARKS.md's PyTorch ratios were taken. Needs torch, transformers and
safetensors (the script installs them into a throwaway venv). Threads: torch's default
(one per core); set AZR_TORCH_THREADS to override.

generate: prefill of fixed prompt ids (i * 7919 % vocab) per row, logits of the last position,
then decode steps with the KV cache feeding (row * 31 + step) % vocab, logits for every row.
update: per sequence (micro-batch 1) the log-probs of its completion, a PPO-clipped token loss
with advantages of +-1, backward; then gradient clipping and one AdamW step with lr 0, as
azr's update does. Medians of --repeats after one warm-up. Peak RSS is the process's.
"""

import argparse
import os
import resource
import statistics
import time

import torch
import transformers


def load(model_dir, dtype):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype={"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    )
    return model


def generate(args):
    model = load(args.model, args.dtype).eval()
    vocab = model.config.vocab_size

    def measure(b, prompt, new):
        ids = torch.tensor([(i * 7919) % vocab for i in range(b * prompt)]).reshape(b, prompt)
        with torch.inference_mode():
            started = time.perf_counter()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            prefill = time.perf_counter() - started
            started = time.perf_counter()
            for step in range(new):
                nxt = torch.tensor([[(r * 31 + step) % vocab] for r in range(b)])
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
            decode = time.perf_counter() - started
        return b * prompt / prefill, b * new / decode, 1000 * decode / new

    measure(1, 8, 2)
    print(f"torch {torch.__version__}, {args.dtype}, {torch.get_num_threads()} threads, "
          f"{args.prompt_tokens}-token prompts, {args.new_tokens} new tokens")
    print("| batch | prefill tok/s | decode tok/s | ms per decode step |")
    print("| ---: | ---: | ---: | ---: |")
    for b in args.batch:
        p, d, ms = measure(b, args.prompt_tokens, args.new_tokens)
        print(f"| {b} | {p:.0f} | {d:.1f} | {ms:.1f} |")


def update(args):
    model = load(args.model, args.dtype).train()
    vocab = model.config.vocab_size

    def tokens(row, n, salt):
        return [(row * 7919 + i * 104_729 + salt) % vocab for i in range(n)]

    seqs = [torch.tensor([tokens(r, args.prompt_tokens, 1) + tokens(r, args.completion_tokens, 2)])
            for r in range(args.sequences)]
    adv = [1.0 if r % 2 else -1.0 for r in range(args.sequences)]
    p = args.prompt_tokens

    def logprobs(ids):
        logits = model(input_ids=ids).logits[:, p - 1:-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[:, p:, None]).squeeze(-1)

    with torch.no_grad():
        old = [logprobs(s).detach() for s in seqs]
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)
    tokens_total = args.sequences * args.completion_tokens

    def one_update():
        opt.zero_grad(set_to_none=True)
        for s, o, a in zip(seqs, old, adv):
            ratio = torch.exp(logprobs(s) - o)
            clipped = torch.clamp(ratio, 1 - 0.2, 1 + 0.28)
            loss = -torch.min(ratio * a, clipped * a).sum() / tokens_total
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def forward():
        with torch.no_grad():
            for s in seqs:
                logprobs(s)

    def timed(fn):
        fn()
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    fwd = timed(forward)
    upd = timed(one_update)
    total = args.sequences * (args.prompt_tokens + args.completion_tokens)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch {torch.__version__}, {args.dtype}, {torch.get_num_threads()} threads, "
          f"{args.sequences} x ({args.prompt_tokens} + {args.completion_tokens}) tokens, micro-batch 1")
    print("| work | seconds | tokens/s | vs forward |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| forward, no gradients | {fwd:.2f} | {total / fwd:.0f} | 1.00x |")
    print(f"| update: forward, backward, AdamW | {upd:.2f} | {total / upd:.0f} | {upd / fwd:.2f}x |")
    print(f"peak RSS {rss:.0f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["generate", "update"])
    parser.add_argument("model")
    parser.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--completion-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    args.batch = [int(b) for b in args.batch.split(",")]
    if "AZR_TORCH_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["AZR_TORCH_THREADS"]))
    {"generate": generate, "update": update}[args.what](args)


if __name__ == "__main__":
    main()
