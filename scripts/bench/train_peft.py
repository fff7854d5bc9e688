"""Anchor for scripts/bench/train-vs-peft.sh: a PyTorch + PEFT LoRA training loop with the same
data (a chat JSONL), masks (assistant tokens only, via the {% generation %}-tagged template),
batching (batch 4, padded, in file order), LoRA (r 8, alpha 16, all linear, dropout 0), AdamW
(lr 2e-4, wd 0), clipping 1.0 and number of steps as `ft train` in the same script. CPU, f32,
2 threads. Prints tokens/s (padding excluded, first step excluded) and peak RSS. With
--autocast-bf16 the forward runs under torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's
mixed precision (weights and optimizer f32), the anchor of `ft train --precision bf16`."""

import contextlib

import argparse
import json
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument("--model-dir", default="models")
parser.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
parser.add_argument("--autocast-bf16", action="store_true")
args = parser.parse_args()

torch.set_num_threads(2)
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=args.gguf)
tagged = json.load(open("crates/ft-data/tests/fixtures/masks/smollm2.json"))["tagged_template"]
model = AutoModelForCausalLM.from_pretrained(args.model_dir, gguf_file=args.gguf, torch_dtype=torch.float32)
config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
model = get_peft_model(model, config)
model.train()
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)

examples = []
for line in open(args.data):
    enc = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, chat_template=tagged)
    labels = [t if m else -100 for t, m in zip(enc["input_ids"], enc["assistant_masks"])]
    examples.append((enc["input_ids"], labels))

pad = tokenizer.eos_token_id or 0
times, tokens = [], []
for step in range(args.steps):
    batch = [examples[(step * args.batch_size + i) % len(examples)] for i in range(args.batch_size)]
    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([b[0] + [pad] * (width - len(b[0])) for b in batch])
    labels = torch.tensor([b[1] + [-100] * (width - len(b[1])) for b in batch])
    mask = torch.tensor([[1] * len(b[0]) + [0] * (width - len(b[0])) for b in batch])
    start = time.perf_counter()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.autocast_bf16 else contextlib.nullcontext()
    with autocast:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
    tokens.append(int(mask.sum()))
tokens_per_sec = sum(tokens[1:]) / sum(times[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"PyTorch+PEFT{' (autocast bf16)' if args.autocast_bf16 else ''}: {args.steps} steps, batch {args.batch_size}, {tokens_per_sec:.1f} tokens/s, peak RSS {peak:.0f} MiB")
print(f"RESULT tokens_per_sec={tokens_per_sec:.3f} peak_rss_mib={peak:.1f}")
