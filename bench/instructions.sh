#!/usr/bin/env bash
# Counts the CPU instructions one call costs, under valgrind's callgrind,
# for the happy path's clients: bare go-openai, bare go-openai with each
# call under a cancellable context of its own (the floor of any client that
# can cancel calls in flight), llmdrain without hooks (with its defaults,
# and with the per-attempt bounds that can be turned off turned off), and
# llmdrain with the otelmetrics module's metrics on, each a whole call over
# a loopback socket to an in-process llmtest server (the server's share is
# the same for all), then the same clients without the socket
# (BenchmarkClientOverhead: a transport that answers from memory).
#
# Instruction counts do not depend on what else the machine is doing, so
# the ratios are the same from run to run within a few tenths of a percent,
# where calls per second on a shared machine move by several percent. They
# leave out what costs time without instructions (cache misses, the
# kernel's side of the system calls, which are the same for every client):
# the bench program's calls per second remain the measure of record.
#
# One call's count is the difference between runs of N2 and N1 calls,
# divided by N2-N1, so that start-up and warm-up cancel out.
#
# Usage: bench/instructions.sh [N1 N2]   (needs valgrind; about four minutes)
# Run one at a time: two callgrind runs of Go side by side fail here.
set -euo pipefail
shopt -s inherit_errexit
n1=${1:-1000}
n2=${2:-8000}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

(cd "$root/otelmetrics" && go test -c -o "$tmp/otelmetrics.test" .)
(cd "$root" && go test -c -o "$tmp/llmdrain.test" .)

# total BIN REGEXP N: the instructions of a run of N calls. Go under
# valgrind now and then dies of a signal; such a run is tried again.
total() {
  local out
  for _ in 1 2 3 4 5; do
    # Asynchronous preemption signals are what valgrind handles worst.
    out=$(GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" \
      "$1" -test.run '^$' -test.bench "$2" -test.benchtime "${3}x" -test.cpu 1 2>&1) || true
    if grep -q '^PASS' <<<"$out"; then
      grep 'Collected' <<<"$out" | awk '{gsub(",", "", $4); print $4}'
      return
    fi
  done
  echo "callgrind failed 5 times on $2" >&2
  exit 1
}

per_call() {
  local a b
  a=$(total "$1" "$2" "$n1")
  b=$(total "$1" "$2" "$n2")
  echo $(((b - a) / (n2 - n1)))
}

report() {
  local title=$1 bin=$2 bare=$3
  shift 3
  local base
  base=$(per_call "$bin" "$bare")
  printf '\n%s\n\n| Client | Instructions per call | Extra over bare | Bare / client |\n|---|---|---|---|\n' "$title"
  printf '| bare go-openai | %s | — | — |\n' "$base"
  while [ $# -gt 0 ]; do
    local n
    n=$(per_call "$bin" "$2")
    awk -v name="$1" -v n="$n" -v base="$base" \
      'BEGIN { printf "| %s | %d | %+d | %.1f %% |\n", name, n, n - base, 100 * base / n }'
    shift 2
  done
}

report "Whole call over a loopback socket, server included (otelmetrics BenchmarkCall)" \
  "$tmp/otelmetrics.test" 'BenchmarkCall/^gopenai$' \
  "floor: bare go-openai, each call under a cancellable context" 'BenchmarkCall/^gopenai-cancellable$' \
  "llmdrain, hooks nil" 'BenchmarkCall/^hooks=nil$' \
  "llmdrain, hooks nil, per-attempt bounds off" 'BenchmarkCall/^lean$' \
  "llmdrain, metrics on (otelmetrics)" 'BenchmarkCall/^otelmetrics$'
report "Client alone, answered from memory (BenchmarkClientOverhead)" \
  "$tmp/llmdrain.test" 'BenchmarkClientOverhead$/^gopenai$' \
  "llmdrain, hooks nil" 'BenchmarkClientOverhead$/^llmdrain$' \
  "llmdrain, every hook set (no-op)" 'BenchmarkClientOverhead$/^llmdrain-hooks$'
