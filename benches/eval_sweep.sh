#!/usr/bin/env bash
# pass@1 (greedy) of the provisioned models on every problem of all four benchmarks: the
# "Evaluation" table of BENCHMARKS.md. One `azr eval` per model and benchmark, one after the
# other; summaries, samples and per-task results land in evals/sweep/.
#
#   benches/eval_sweep.sh [MODEL ...]     # default: both provisioned models
#
# BATCH (default 16) sets `--batch`; greedy decoding does not depend on it. BENCHES (default
# "humaneval mbpp cruxeval-o cruxeval-i") picks the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(qwen2.5-coder-0.5b-instruct smollm2-135m-instruct)
cargo build --release -q
mkdir -p evals/sweep
for model in "${models[@]}"; do
    for bench in ${BENCHES:-humaneval mbpp cruxeval-o cruxeval-i}; do
        target/release/azr eval --bench "$bench" --model "$model" --batch "${BATCH:-16}" \
            --out "evals/sweep/$bench-$model.json"
    done
done
# One line per run: model, bench, problems, pass@1, wall seconds, generated tokens.
for f in evals/sweep/*.json; do
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["source"], s["bench"], s["problems"], "%.1f%%" % (100*s["pass@1"]), "%.0f s" % s["seconds"], s["tokens"])' "$f"
done
