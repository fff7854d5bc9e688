"""Anchor for benches/lora_step.rs: forward + backward of a LoRA step with PyTorch + PEFT on the
same GGUF (dequantized to float32 by transformers), the same tokens and LoRA settings, CPU,
float32, 2 threads. Prints ms/step, tokens/s and peak RSS like the Rust side."""

import argparse
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

parser = argparse.ArgumentParser()
parser.add_argument("--model-dir", default="models")
parser.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
parser.add_argument("--batch", type=int, default=4)
parser.add_argument("--seq", type=int, default=128)
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--rank", type=int, default=8)
args = parser.parse_args()

torch.set_num_threads(2)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(args.model_dir, gguf_file=args.gguf, torch_dtype=torch.float32)
config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
model = get_peft_model(model, config)
with torch.no_grad():
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.fill_(1e-3)
model.train()

vocab = model.config.vocab_size
n = args.batch * args.seq
# The same pseudo-random ids as benches/lora_step.rs.
ids = torch.tensor([(i * 7919 + 13) % vocab for i in range(n)], dtype=torch.long).reshape(args.batch, args.seq)


def step():
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item()


loss = step()  # warm-up
start = time.perf_counter()
for _ in range(args.steps):
    step()
seconds = (time.perf_counter() - start) / args.steps
tokens_per_sec = n / seconds
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"PyTorch+PEFT batch {args.batch}x{args.seq} r{args.rank}: loss {loss:.4f}, {seconds * 1e3:.1f} ms/step, {tokens_per_sec:.1f} tokens/s, peak RSS {peak:.0f} MiB")
print(f"RESULT tokens_per_sec={tokens_per_sec:.3f} peak_rss_mib={peak:.1f}")
