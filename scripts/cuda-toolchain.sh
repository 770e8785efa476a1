#!/usr/bin/env bash
# Provisions what `cargo build --release --features cuda` needs on a machine with no system CUDA
# and no GPU: nvcc, the CUDA headers and the libraries candle links against, all from NVIDIA's
# PyPI wheels (CUDA 13.0, the only release whose wheels carry nvcc), pinned by sha256.
#
#   eval "$(scripts/cuda-toolchain.sh)"          # installs once into $AZR_HOME/cuda-13.0, then
#   cargo build --release --features cuda        # prints the environment the build needs
#
# The driver library (libcuda.so.1) comes with the GPU's driver, so the build links against a
# stub that defines the driver symbols cudarc calls and carries the driver's soname; at run time
# the real one is loaded. The kernels are compiled for CUDA_COMPUTE_CAP (default 90: H100/H200).
set -euo pipefail

AZR_HOME="${AZR_HOME:-$HOME/.cache/azr}"
PREFIX="$AZR_HOME/cuda-13.0"
PYTHON="${AZR_PYTHON:-python3}"
COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { echo "cuda-toolchain: $*" >&2; }

install() {
    tmp="$(mktemp -d "$AZR_HOME/.cuda-13.0.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    cat >"$tmp/requirements.txt" <<'EOF'
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cublas==13.0.2.14 --hash=sha256:0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c
nvidia-curand==10.4.0.35 --hash=sha256:1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
EOF
    say "downloading the CUDA 13.0 wheels (~680 MB) into $PREFIX"
    "$PYTHON" -m pip install --quiet --no-deps --only-binary=:all: --require-hashes \
        --target "$tmp/site" -r "$tmp/requirements.txt" >&2 \
        || { say "pip failed: check access to PyPI, or set AZR_PYTHON to a python3 with pip"; exit 1; }

    # The wheels unpack into one CUDA_HOME-shaped tree.
    local home="$tmp/site/nvidia/cu13"
    ln -s lib "$home/lib64"
    # The linker wants unversioned names; the binary records the versioned sonames.
    for lib in cudart cublas cublasLt curand nvrtc; do
        local real
        real="$(cd "$home/lib" && ls "lib$lib.so."* | grep -v -e alt -e builtins | head -n1)"
        ln -s "$real" "$home/lib/lib$lib.so"
    done

    # The driver stub: every driver entry point cudarc can call, soname libcuda.so.1. Each
    # returns CUDA_ERROR_NO_DEVICE (100), so a build run here with the stubs on
    # LD_LIBRARY_PATH reports "no GPU" instead of crashing; never put them there on a GPU host.
    local bindings
    bindings="$(cudarc_driver_bindings)"
    mkdir -p "$home/lib/stubs"
    grep -oE 'load::<_F>\("cu[A-Za-z0-9_]+"\)' "$bindings" | sed -E 's/.*\("(.*)"\)/\1/' | sort -u \
        | awk '{ print "int " $1 "(void) { return 100; }" }' >"$tmp/libcuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib/stubs/libcuda.so" "$tmp/libcuda_stub.c"
    ln -s libcuda.so "$home/lib/stubs/libcuda.so.1"

    rm -rf "$PREFIX"
    mv "$home" "$PREFIX"
    say "installed into $PREFIX"
}

# The driver bindings of the cudarc release in Cargo.lock, fetched by cargo.
cudarc_driver_bindings() {
    local version file
    version="$(grep -A1 '^name = "cudarc"$' "$ROOT/Cargo.lock" | sed -nE 's/^version = "(.*)"/\1/p')"
    (cd "$ROOT" && cargo fetch --quiet >&2)
    file="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$version/src/driver/sys/mod.rs" 2>/dev/null | head -n1)"
    [ -n "$file" ] || { say "cannot find cudarc $version's sources after cargo fetch"; exit 1; }
    echo "$file"
}

mkdir -p "$AZR_HOME"
[ -x "$PREFIX/bin/nvcc" ] && [ -e "$PREFIX/lib/stubs/libcuda.so.1" ] || install

cat <<EOF
export CUDA_HOME="$PREFIX"
export PATH="$PREFIX/bin:\$PATH"
export LIBRARY_PATH="$PREFIX/lib:$PREFIX/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="$COMPUTE_CAP"
EOF
