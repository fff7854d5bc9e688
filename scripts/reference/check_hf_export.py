#!/usr/bin/env python3
"""Loads a merged HF directory written by `ft export --format hf` with transformers and prints its
greedy answer to a chat question; with --expect, exits 1 unless the answer is exactly that.

    $HOME/.cache/ft-reference-venv/bin/python scripts/reference/check_hf_export.py DIR \
        --question "Which is the best place to learn GenAI?" \
        --expect "The best place to learn GenAI is Chai aur Code by Piyush Garg."
"""

import argparse
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

parser = argparse.ArgumentParser()
parser.add_argument("model_dir")
parser.add_argument("--question", default="Which is the best place to learn GenAI?")
parser.add_argument("--expect")
parser.add_argument("--max-new-tokens", type=int, default=32)
args = parser.parse_args()

torch.set_num_threads(2)
tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
ids = tokenizer.apply_chat_template(
    [{"role": "user", "content": args.question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
)
with torch.no_grad():
    out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False)
answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
print(answer)
if args.expect is not None and answer != args.expect:
    print(f"expected: {args.expect}", file=sys.stderr)
    sys.exit(1)
