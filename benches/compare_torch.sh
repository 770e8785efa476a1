#!/usr/bin/env bash
# azr against PyTorch + transformers on one model folder, back to back in one script run:
# generation (azr bench generate, f32 and with bf16 decode weights, vs reference_torch.py
# generate in f32 and bf16) and one policy update (azr bench update vs reference_torch.py
# update, likewise). Prints the tables
# BENCHMARKS.md quotes.
#
#   benches/compare_torch.sh MODEL_NAME_OR_DIR [generate|update|all]
#
# torch, transformers and safetensors go into a throwaway venv ($TORCH_VENV, default
# /tmp/azr-torch-venv), never into the project. azr is built with `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: benches/compare_torch.sh MODEL_NAME_OR_DIR [generate|update|all]}
what=${2:-all}
venv=${TORCH_VENV:-/tmp/azr-torch-venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch transformers safetensors numpy
fi
cargo build --release -q
azr=target/release/azr
# A name resolves to its provisioned folder (fetched on first use by azr itself).
if [ -d "$model" ]; then dir=$model; else
    "$azr" model info "$model" > /dev/null
    dir=${AZR_HOME:-$HOME/.cache/azr}/models/$model
fi
py="$venv/bin/python benches/reference_torch.py"
if [ "$what" = generate ] || [ "$what" = all ]; then
    echo "## generate"
    for decode in "" --bf16-decode; do
        "$azr" bench generate --model "$dir" --batch 1,8 --prompt-tokens 128 --new-tokens 32 $decode
    done
    for dtype in f32 bf16; do
        $py generate "$dir" --dtype "$dtype" --batch 1,8 --prompt-tokens 128 --new-tokens 32
    done
fi
if [ "$what" = update ] || [ "$what" = all ]; then
    echo "## update"
    "$azr" bench update --model "$dir" --sequences 8 --prompt-tokens 128 --completion-tokens 128 --repeats 2
    for dtype in f32 bf16; do
        $py update "$dir" --dtype "$dtype" --sequences 8 --prompt-tokens 128 --completion-tokens 128 --repeats 2
    done
fi
