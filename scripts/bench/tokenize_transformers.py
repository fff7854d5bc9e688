"""Anchor for benches/tokenize.rs: transformers' apply_chat_template + tokenization of the same
examples (the shipped support set repeated), with the same SmolLM2 GGUF tokenizer."""

import argparse
import json
import time

from transformers import AutoTokenizer

parser = argparse.ArgumentParser()
parser.add_argument("--model-dir", default="models")
parser.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
parser.add_argument("--repeat", type=int, default=20)
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=args.gguf)
with open("datasets/support/train.jsonl") as f:
    lines = f.read().splitlines() * args.repeat
start = time.perf_counter()
tokens = 0
for line in lines:
    messages = json.loads(line)["messages"]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    tokens += len(ids)
seconds = time.perf_counter() - start
per_sec = len(lines) / seconds
print(f"transformers: {len(lines)} examples ({tokens} tokens) apply_chat_template + tokenize in {seconds:.2f} s, {per_sec:.0f} examples/s")
print(f"RESULT examples_per_sec={per_sec:.3f}")
