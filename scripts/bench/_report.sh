# Sourced by the benchmark scripts that compare ft with an anchor in one run: the load-average
# note and the ratio. (Sourced from the repository root.)
#
# Defines:
#   load_note WHEN       prints the 1-minute load average and warns when it is above half the
#                        cores: numbers taken while other jobs compete for the cores are not
#                        comparable (the anchors' thread pools spin-wait and suffer far more from
#                        oversubscription than ft does)
#   ratio A B            prints A / B as "1.23x" ("n/a" when either is missing or B is 0)
#   result_value TEXT KEY  the number after KEY= on the last RESULT line of TEXT that has it

load_note() {
  local load
  load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
  echo "load average $1: $load on $(nproc) cores"
  if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > 0.5 * float(sys.argv[2]) else 1)" "$load" "$(nproc)" 2>/dev/null; then
    echo "warning: the machine is busy; absolute numbers and the anchor ratios are unreliable"
  fi
}

ratio() {
  python3 -c '
import sys
try:
    a, b = float(sys.argv[1]), float(sys.argv[2])
    print(f"{a / b:.2f}x" if b else "n/a")
except (ValueError, IndexError):
    print("n/a")' "$@"
}

result_value() {
  printf '%s\n' "$1" | sed -n "s/^RESULT.*[ ]$2=\([0-9.eE+-]*\).*/\1/p; s/^RESULT $2=\([0-9.eE+-]*\).*/\1/p" | tail -n1
}
