"""Anchor for benches/decode.rs: transformers' greedy `generate` on the same GGUF and chat
prompt, batch 1, CPU, float32, T threads (default 2), exactly N new tokens."""

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

parser = argparse.ArgumentParser()
parser.add_argument("--model-dir", default="models")
parser.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
parser.add_argument("--new-tokens", type=int, default=128)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()

torch.set_num_threads(args.threads)
tokenizer = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=args.gguf)
model = AutoModelForCausalLM.from_pretrained(args.model_dir, gguf_file=args.gguf, torch_dtype=torch.float32)
model.eval()
messages = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
with torch.inference_mode():
    model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
new = out.shape[1] - ids.shape[1]
print(f"transformers greedy generate: {new} new tokens in {seconds:.2f} s, {new / seconds:.1f} tokens/s")
print(f"RESULT tokens_per_sec={new / seconds:.3f}")
