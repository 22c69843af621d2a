#!/usr/bin/env bash
# Issue 24's figures in one sitting: the plain Flax loop to beat (if given), the bare
# loop, the chunk and the command (vs_bare.py), the 8-lr sweep, the CNN and the start-up,
# after (this checkout) and, with BEFORE=<checkout>, before, in alternating order.
#
#   bash benchmarks/sitting.sh OUT [ANCHOR_SCRIPT]     # BEFORE=/path/to/old/checkout optional
#
# BEFORE_PIECES (default: all) limits which pieces also run before. Each piece's output
# goes to OUT/<piece>.<which>.txt. Run it on a quiet machine.
set -euo pipefail
out=${1:?usage: sitting.sh OUT [ANCHOR_SCRIPT]}; anchor=${2:-}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
run() {  # run WHICH NAME CMD...: WHICH=after (this checkout) or before ($BEFORE's bnlab)
  local which=$1 name=$2; shift 2
  echo "== $(date -u +%H:%M:%S) $name ($which), load $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$out/log.txt"
  if [ "$which" = before ]; then
    (cd "$BEFORE" && PYTHONPATH="$BEFORE" "$@") > "$out/$name.$which.txt" 2>&1
  else
    (cd "$root" && "$@") > "$out/$name.$which.txt" 2>&1
  fi
}
sides=(after); [ -n "${BEFORE:-}" ] && sides=(before after)
only=${BEFORE_PIECES:-vs_bare cnn startup sweep}  # the pieces also run before
sides_of() { case " $only " in *" $1 "*) echo "${sides[@]}";; *) echo after;; esac; }
[ -n "$anchor" ] && run after anchor1 "$py" "$anchor" --bn 1 --probe 0 --steps 2000 --repeats 5
for s in $(sides_of vs_bare); do run "$s" vs_bare "$py" benchmarks/vs_bare.py --steps "${STEPS:-10000}" --rounds 3; done
[ -n "$anchor" ] && run after anchor2 "$py" "$anchor" --bn 1 --probe 0 --steps 2000 --repeats 5
for s in $(sides_of cnn); do run "$s" cnn "$py" benchmarks/conv_speed.py --models cnn --rounds 3; done
for s in $(sides_of startup); do run "$s" startup "$py" benchmarks/train_speed.py --startup-only; done
for s in $(sides_of sweep); do run "$s" sweep "$py" benchmarks/sweep.py --steps "${SWEEP_STEPS:-50000}" --ways one,vectorized; done
echo "== $(date -u +%H:%M:%S) done" | tee -a "$out/log.txt"
