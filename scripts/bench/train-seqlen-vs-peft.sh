#!/usr/bin/env bash
# Long sequences: a LoRA training step at 512, 1024 and 2048 tokens (batch 1), ft with and
# without --gradient-checkpointing against PyTorch+PEFT, each length in one invocation.
#   scripts/bench/train-seqlen-vs-peft.sh [--steps 2]
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=2
if [ "${1:-}" = "--steps" ]; then STEPS=$2; fi
for seq in 512 1024 2048; do
  echo "== batch 1 x $seq"
  scripts/bench/lora-step-vs-peft.sh --batch 1 --seq "$seq" --steps "$STEPS"
done
