#!/usr/bin/env bash
# Serving under load, CPU, 2 threads: `ft serve` vs llama.cpp's `llama-server --parallel N`, same
# Q4_1 GGUF, same prompts, same max_tokens, streamed greedy chat completions to the base model,
# closed loop at concurrency 8 and 32 (scripts/bench/serve_load.py --only-model). Prints, per
# level and per server, aggregate output tokens/s, time to first token p50/p99 and latency p50,
# the ratios ft / llama-server, and the peak RSS of `ft serve` holding the base and 8 adapters
# against the GGUF's file size.
#   scripts/bench/serve-vs-llama-server.sh [--max-tokens 32] [--concurrency 8,32] [--requests-factor 2] [ADAPTER_DIR]
#
# - ft serve: one server for all levels, `--threads 2 --precision quantized`, with 8 adapters
#   (a0..a7 = copies of ADAPTER_DIR, default tests/fixtures/smollm2/peft-adapter) loaded but
#   not asked for: what is measured is the base, as llama-server serves it; the adapters are
#   there for the memory figure. Peak RSS is VmHWM of /proc/PID/status after the load.
# - llama-server: one server per level N, `--parallel N -c N×$CTX_PER_SLOT -t 2 -tb 2 --jinja`
#   (the GGUF's own chat template, as ft renders it); continuous batching and prompt caching
#   as shipped (its defaults).
# - N = max(4, factor × c) requests per level, after one warm-up request; p99 is nearest-rank
#   (the maximum at these N). "answers identical" counts prompts whose greedy text is the same
#   on both servers (different kernels and rounding: informative, no goal).
#   CPU: the server's (user+sys)/wall during the load, in % of one core; the client (Python,
#   same machine) shares the cores with whichever server runs.
# Builds nothing but llama.cpp: expects target/release/ft or $FT_BIN. Takes 3-5 minutes on 2
# cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
max_tokens=32
concurrency=8,32
factor=2
threads=2
source_adapter=tests/fixtures/smollm2/peft-adapter
while [ $# -gt 0 ]; do
  case $1 in
    --max-tokens) max_tokens=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --requests-factor) factor=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    -*) echo "usage: $0 [--max-tokens N] [--concurrency 8,32] [--requests-factor F] [--threads T] [ADAPTER_DIR]" >&2; exit 2 ;;
    *) source_adapter=$1; shift ;;
  esac
done
CTX_PER_SLOT=${CTX_PER_SLOT:-512}

source scripts/serve/_common.sh
source scripts/bench/_report.sh
source scripts/bench/_llama_cpp.sh
scripts/fetch-model.sh >/dev/null
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
BASE=$(basename "$MODEL" .gguf)
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
load_note "before the run (no server started yet)"

tmp=$(mktemp -d)
LLAMA_SERVER_PID=""
stop_llama_server() {
  [ -n "$LLAMA_SERVER_PID" ] || return 0
  local pid=$LLAMA_SERVER_PID i
  LLAMA_SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop_ft_serve
  stop_llama_server
  rm -rf "$tmp"
}
trap cleanup EXIT

# start_llama_server LOG PARALLEL: sets LLAMA_SERVER_URL and LLAMA_SERVER_PID once /health is 200
# (it answers 503 while the model loads).
start_llama_server() {
  local log=$1 parallel=$2 port deadline
  port=$(_ft_free_port)
  "$LLAMA_CPP_BIN/llama-server" -m "$MODEL" --host 127.0.0.1 --port "$port" \
    --parallel "$parallel" -c $((parallel * CTX_PER_SLOT)) -t "$threads" -tb "$threads" \
    --jinja >"$log" 2>&1 &
  LLAMA_SERVER_PID=$!
  LLAMA_SERVER_URL="http://127.0.0.1:$port"
  deadline=$((SECONDS + 120))
  until curl -sf -o /dev/null "$LLAMA_SERVER_URL/health"; do
    if ! kill -0 "$LLAMA_SERVER_PID" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: llama-server did not come up; its log ($log):" >&2
      cat "$log" >&2
      stop_llama_server
      return 1
    fi
    sleep 0.2
  done
}

# kb_of PID FIELD: VmHWM / VmRSS of a live process, in kB.
kb_of() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
# cpu_ticks PID: utime + stime so far (all threads).
cpu_ticks() { python3 -c 'import sys; d = open(f"/proc/{sys.argv[1]}/stat").read(); f = d[d.rindex(")") + 2:].split(); print(int(f[11]) + int(f[12]))' "$1"; }
mib() { python3 -c 'import sys; print(f"{int(sys.argv[1]) / 1024:.0f}")' "$1"; }

# load_run LABEL URL PID CONCURRENCY EXTRA..: runs serve_load.py, prints its table, sets LOAD
# (its RESULT lines) and CPU (the server's % of one core during the run).
load_run() {
  local label=$1 url=$2 pid=$3 levels=$4 out t0 c0 status=0
  shift 4
  t0=$(date +%s%N)
  c0=$(cpu_ticks "$pid")
  out=$("$OPENAI_PYTHON" scripts/bench/serve_load.py --base-url "$url" --base-model "$BASE" \
    --only-model "$BASE" --label "$label" --concurrency "$levels" --requests-factor "$factor" \
    --min-requests 4 --max-tokens "$max_tokens" --decode-reps 0 "$@") || status=$?
  CPU=$(python3 -c 'import os, sys; t, w, hz = int(sys.argv[1]), int(sys.argv[2]) / 1e9, os.sysconf("SC_CLK_TCK"); print(f"{100 * t / hz / w:.0f}")' \
    "$(($(cpu_ticks "$pid") - c0))" "$(($(date +%s%N) - t0))")
  printf '%s\n' "$out" | grep -v '^RESULT'
  LOAD=$(printf '%s\n' "$out" | grep '^RESULT' || true)
  return "$status"
}

# --- ft serve ---------------------------------------------------------------------------------
adapter_args=()
for i in 0 1 2 3 4 5 6 7; do
  cp -r "$source_adapter" "$tmp/a$i"
  adapter_args+=(--adapter "a$i=$tmp/a$i")
done
echo "starting $FT_BIN serve --threads $threads --precision quantized with 8 adapters (a0..a7 = copies of $source_adapter) ..."
start_ft_serve "$tmp/ft.log" --model "$MODEL" --device cpu --threads "$threads" --precision quantized "${adapter_args[@]}"
ft_rss_idle=$(kb_of "$FT_SERVE_PID" VmRSS)
IFS=, read -r -a levels <<<"$concurrency"
status=0 ft_load="" ft_cpu=()
for c in "${levels[@]}"; do
  load_run "ft serve" "$FT_SERVE_URL" "$FT_SERVE_PID" "$c" --expect-fingerprint base \
    --texts-out "$tmp/ft-$c.json" || status=$?
  ft_load="$ft_load"$'\n'"$LOAD"
  ft_cpu+=("$CPU")
  [ "$status" -eq 0 ] || break
  echo "ft serve CPU during the c=$c load: $CPU % of one core ($((threads * 100)) % = $threads threads busy)"
done
ft_hwm=$(kb_of "$FT_SERVE_PID" VmHWM)
if grep -qiE 'panick|error' "$tmp/ft.log"; then
  echo "--- ft serve logged errors ---"
  grep -iE 'panick|error' "$tmp/ft.log" | head -n 20
fi
stop_ft_serve
[ "$status" -eq 0 ] || { echo "error: the ft serve load run failed (status $status)" >&2; exit "$status"; }

# --- llama-server, one per level --------------------------------------------------------------
llama_load="" llama_cpu=() llama_hwm=()
for c in "${levels[@]}"; do
  echo
  echo "starting llama-server --parallel $c -c $((c * CTX_PER_SLOT)) -t $threads ..."
  start_llama_server "$tmp/llama-$c.log" "$c"
  load_run "llama-server --parallel $c" "$LLAMA_SERVER_URL" "$LLAMA_SERVER_PID" "$c" \
    --no-fingerprint-check --texts-out "$tmp/llama-$c.json" || status=$?
  llama_load="$llama_load"$'\n'"$LOAD"
  llama_cpu+=("$CPU")
  llama_hwm+=("$(kb_of "$LLAMA_SERVER_PID" VmHWM)")
  stop_llama_server
  [ "$status" -eq 0 ] || { echo "error: the llama-server load run failed (status $status); its log:" >&2; tail -n 40 "$tmp/llama-$c.log" >&2; exit "$status"; }
  echo "llama-server CPU during the load: $CPU % of one core"
done

# --- comparison -------------------------------------------------------------------------------
same=$(python3 -c '
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
keys = sorted(set(a) & set(b))
print(f"{sum(a[k] == b[k] for k in keys)}/{len(keys)}")' "$tmp/ft-${levels[0]}.json" "$tmp/llama-${levels[0]}.json")
gguf_kb=$(($(stat -c %s "$MODEL") / 1024))
echo
echo "ft serve vs llama-server: $BASE, streamed greedy chat, max_tokens $max_tokens, $threads threads each"
# The table and the ratios from both sides' RESULT lines; CPU % per level as "c:percent".
per_level() { local -n values=$1; local i; for i in "${!levels[@]}"; do printf '%s:%s ' "${levels[$i]}" "${values[$i]}"; done; }
result=$(python3 - "$ft_load" "$llama_load" "$(per_level ft_cpu)" "$(per_level llama_cpu)" <<'PY'
import sys

def rows(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("RESULT scenario=base "):
            kv = dict(f.split("=", 1) for f in line.split()[1:])
            out[int(kv["c"])] = {k: float(v) for k, v in kv.items() if k != "scenario"}
    return out

ft, ll = rows(sys.argv[1]), rows(sys.argv[2])
ft_cpu, ll_cpu = (dict(x.split(":") for x in a.split()) for a in sys.argv[3:5])
def r(a, b):
    return a / b if b else float("nan")
head = f"{'c':<4} {'server':<13} {'ok/N':>7} {'out tok/s':>9} {'ttft p50':>8} {'ttft p99':>8} {'lat p50':>8} {'CPU %':>6}"
print(head)
print("-" * len(head))
result = ["RESULT"]
for c in sorted(set(ft) | set(ll)):
    for name, side, cpu in (("ft serve", ft, ft_cpu.get(str(c), "?")), ("llama-server", ll, ll_cpu.get(str(c), "?"))):
        x = side.get(c)
        if x is None:
            print(f"{c:<4} {name:<13} {'(no result)':>7}")
            continue
        ok = f"{x['ok']:.0f}/{x['n']:.0f}"
        print(f"{c:<4} {name:<13} {ok:>7} {x['tps']:>9.1f} {x['ttft_p50']:>8.3f} {x['ttft_p99']:>8.3f} {x['lat_p50']:>8.3f} {cpu:>6}")
for c in sorted(set(ft) & set(ll)):
    a, b = ft[c], ll[c]
    print(
        f"c={c} ratio ft/llama-server: throughput {r(a['tps'], b['tps']):.2f}x (goal >= 1.0x), "
        f"ttft p50 {r(a['ttft_p50'], b['ttft_p50']):.2f}x, ttft p99 {r(a['ttft_p99'], b['ttft_p99']):.2f}x "
        f"(goal < 1.0x), latency p50 {r(a['lat_p50'], b['lat_p50']):.2f}x"
    )
    result += [
        f"c{c}_ft_tps={a['tps']:.2f}", f"c{c}_llama_tps={b['tps']:.2f}", f"c{c}_tps_ratio={r(a['tps'], b['tps']):.3f}",
        f"c{c}_ft_ttft_p99={a['ttft_p99']:.3f}", f"c{c}_llama_ttft_p99={b['ttft_p99']:.3f}",
        f"c{c}_ttft_p99_ratio={r(a['ttft_p99'], b['ttft_p99']):.3f}",
    ]
print(" ".join(result))
PY
)
printf '%s\n' "$result" | grep -v '^RESULT'
result=$(printf '%s\n' "$result" | grep '^RESULT')
echo "answers identical to llama-server's (greedy, first run of each prompt at c=${levels[0]}): $same"
echo
echo "ft serve memory, base + 8 adapters: peak RSS (VmHWM) $(mib "$ft_hwm") MiB after the load ($(mib "$ft_rss_idle") MiB resident when idle after start), GGUF file $(mib "$gguf_kb") MiB: $(ratio "$ft_hwm" "$gguf_kb") the file"
for i in "${!levels[@]}"; do
  echo "llama-server --parallel ${levels[$i]} peak RSS (VmHWM): $(mib "${llama_hwm[$i]}") MiB ($(ratio "${llama_hwm[$i]}" "$gguf_kb") the file)"
done
load_note "at the end"
echo "$result ft_peak_rss_kb=$ft_hwm gguf_kb=$gguf_kb rss_ratio=$(r=$(ratio "$ft_hwm" "$gguf_kb"); echo "${r%x}")"
