#!/usr/bin/env bash
# Builds llama.cpp's llama-bench for benchmarks/llm.py, from the llama.cpp sources that the
# llama-cpp-python sdist on PyPI vendors (PyPI is reachable where GitHub may not be). ~8 min on 2 cores.
# Result: build/llamacpp/bin/llama-bench (and the commit it was built from in build/llamacpp/COMMIT).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
OUT=build/llamacpp
[ -x "$OUT/bin/llama-bench" ] && { echo "$OUT/bin/llama-bench exists"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip download -q --no-deps --no-binary :all: "llama_cpp_python==$VERSION" -d "$work"
tar xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$work/build" -j"$(nproc)" --target llama-bench >"$work/build.log" 2>&1 || { tail -20 "$work/build.log"; exit 1; }
mkdir -p "$OUT/bin"
cp "$work/build/bin/llama-bench" "$OUT/bin/"
echo "llama-cpp-python $VERSION sdist" > "$OUT/COMMIT"
echo "built $OUT/bin/llama-bench"
