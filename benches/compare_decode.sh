#!/usr/bin/env bash
# Decode tokens per second of azr against PyTorch and llama.cpp on the same weights, one script
# run, batches 1 to 64 (issue 18's table): a 128-token prompt per row, then 32 decode steps.
#
#   benches/compare_decode.sh [MODEL_NAME_OR_DIR]     # default qwen2.5-coder-0.5b-instruct
#
# - azr: `azr bench generate --bf16-decode` (bf16 decode weights, f32 prefill).
# - PyTorch bf16: benches/reference_torch.py in the venv compare_torch.sh makes ($TORCH_VENV).
# - llama.cpp bf16 and f32: `llama-batched-bench -npp 128 -ntg 32 -npl ... -t 2` on GGUF files
#   converted from the same folder by llama.cpp's own convert_hf_to_gguf.py. llama.cpp is built
#   from the llama-cpp-python source package on PyPI (pinned below), in $LLAMA_DIR (default
#   /tmp/azr-llama), never in the project; cmake comes from PyPI into the venv.
# Threads: 2 for llama.cpp (the issue's protocol), the machine's cores for azr and PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-qwen2.5-coder-0.5b-instruct}
batches=${BATCHES:-1,8,16,32,64}
venv=${TORCH_VENV:-/tmp/azr-torch-venv}
llama=${LLAMA_DIR:-/tmp/azr-llama}
sdist=llama_cpp_python-0.3.36
sdist_sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
sdist_url=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/$sdist.tar.gz

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch transformers safetensors numpy
fi
"$venv/bin/pip" install -q cmake sentencepiece gguf
src=$llama/$sdist/vendor/llama.cpp
bench=$src/build/bin/llama-batched-bench
if [ ! -x "$bench" ]; then
    mkdir -p "$llama"
    curl -sSfL -o "$llama/$sdist.tar.gz" "$sdist_url"
    echo "$sdist_sha256  $llama/$sdist.tar.gz" | sha256sum -c -
    tar -xzf "$llama/$sdist.tar.gz" -C "$llama"
    "$venv/bin/cmake" -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF > /dev/null
    "$venv/bin/cmake" --build "$src/build" -j "$(nproc)" --target llama-batched-bench > /dev/null
fi

cargo build --release -q
azr=target/release/azr
if [ -d "$model" ]; then dir=$model; else
    "$azr" model info "$model" > /dev/null
    dir=${AZR_HOME:-$HOME/.cache/azr}/models/$model
fi
name=$(basename "$dir")
for t in bf16 f32; do
    gguf=$llama/$name-$t.gguf
    [ -f "$gguf" ] || "$venv/bin/python" "$src/convert_hf_to_gguf.py" "$dir" --outtype "$t" \
        --outfile "$gguf" > /dev/null 2>&1
done

echo "## azr bf16 decode"
"$azr" bench generate --model "$dir" --batch "$batches" --prompt-tokens 128 --new-tokens 32 --bf16-decode
echo "## PyTorch bf16"
"$venv/bin/python" benches/reference_torch.py generate "$dir" --dtype bf16 --batch "$batches" \
    --prompt-tokens 128 --new-tokens 32
for t in bf16 f32; do
    echo "## llama.cpp $t"
    # Room for every row's prompt and generation at the largest batch.
    "$bench" -m "$llama/$name-$t.gguf" -c 16384 -b 2048 -ub 512 -npp 128 -ntg 32 \
        -npl "$batches" -t 2 2>/dev/null | grep '^|'
done
