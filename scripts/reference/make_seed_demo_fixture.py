#!/usr/bin/env python3
"""Reference LoRA training run on datasets/seed-demo.jsonl with SmolLM2-135M-Instruct (GGUF), the "demo" config.

Writes tests/fixtures/seed-demo/ (see the README.md written there):
  - initial_lora_A.safetensors: the initial lora_A weights (bf16-rounded, stored as bfloat16, PEFT key names)
  - reference.json: config, input_ids, labels, per-step loss / pre-clip grad norm / lr, greedy generations
  - README.md

Run from the repository root:
    $HOME/.cache/ft-reference-venv/bin/python scripts/reference/make_seed_demo_fixture.py

Deterministic: fixed seed, float32, CPU, 2 threads (two runs give byte-identical files).
"""

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    # Fix str hashing (PEFT keeps target_modules in a set) so nothing depends on the hash seed.
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
from importlib.metadata import version  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

import peft  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL_DIR = os.path.join(ROOT, "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATASET = "datasets/seed-demo.jsonl"
MASKS = "crates/ft-data/tests/fixtures/masks/smollm2.json"
OUT_REL = "tests/fixtures/seed-demo"
OUT = os.path.join(ROOT, OUT_REL)
SCRIPT = "scripts/reference/make_seed_demo_fixture.py"
COMMAND = "$HOME/.cache/ft-reference-venv/bin/python " + SCRIPT
INIT_FILE = "initial_lora_A.safetensors"

SEED = 0
LORA = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "task_type": "CAUSAL_LM",
}
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.0
STEPS = 30
WARMUP = 0
MAX_GRAD_NORM = 1.0
MAX_NEW_TOKENS = 32


def smollm_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def load_tokenizer():
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME)
    if "Digits" not in str(tok.backend_tokenizer.pre_tokenizer):
        tok.backend_tokenizer.pre_tokenizer = smollm_pre_tokenizer()
    return tok


def as_list(x):
    if hasattr(x, "tolist"):
        x = x.tolist()
    x = list(x)
    if x and isinstance(x[0], list):  # batched
        assert len(x) == 1
        x = x[0]
    return [int(v) for v in x]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def greedy(model, tok, prompt_ids):
    inp = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=inp,
            attention_mask=torch.ones_like(inp),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    new_ids = out[0, inp.shape[1]:].tolist()
    return new_ids, tok.decode(new_ids, skip_special_tokens=True)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)

    # ---------------------------------------------------------------- data
    with open(os.path.join(ROOT, DATASET), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert len(rows) == 1, len(rows)
    messages = rows[0]["messages"]
    with open(os.path.join(ROOT, MASKS), encoding="utf-8") as f:
        tagged = json.load(f)["tagged_template"]

    tok = load_tokenizer()
    enc = tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=tagged
    )
    input_ids = as_list(enc["input_ids"])
    mask = as_list(enc["assistant_masks"])
    assert len(mask) == len(input_ids)
    labels = [t if m == 1 else -100 for t, m in zip(input_ids, mask)]
    n_label = sum(1 for v in labels if v != -100)
    # The tagged template renders the same text as the GGUF's own template.
    plain_text = tok.apply_chat_template(messages, tokenize=False)
    assert plain_text == tok.apply_chat_template(messages, tokenize=False, chat_template=tagged)
    assert input_ids == as_list(tok(plain_text, add_special_tokens=False)["input_ids"])
    label_text = tok.decode([v for v in labels if v != -100])

    prompt_msgs = [m for m in messages if m["role"] == "user"]
    prompt_text = tok.apply_chat_template(prompt_msgs, add_generation_prompt=True, tokenize=False)
    prompt_ids = as_list(tok(prompt_text, add_special_tokens=False)["input_ids"])
    assert prompt_ids == as_list(
        tok.apply_chat_template(prompt_msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )

    # ---------------------------------------------------------------- model + LoRA
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())

    torch.manual_seed(SEED)
    pm = get_peft_model(model, LoraConfig(**LORA))
    lora_params = []
    for name, p in pm.named_parameters():
        if not p.requires_grad:
            continue
        assert ".lora_A." in name or ".lora_B." in name, name
        if ".lora_A." in name:
            p.data = p.data.to(torch.bfloat16).to(torch.float32)
        else:
            assert torch.count_nonzero(p.data).item() == 0, name
        lora_params.append(p)
    n_trainable = sum(p.numel() for p in lora_params)

    sd = get_peft_model_state_dict(pm)
    init_a = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in sd.items() if ".lora_A." in k}
    assert len(init_a) == 30 * len(LORA["target_modules"]), len(init_a)
    assert all(torch.count_nonzero(v).item() == 0 for k, v in sd.items() if ".lora_B." in k)
    init_path = os.path.join(OUT, INIT_FILE)
    save_file(init_a, init_path)
    init_size = os.path.getsize(init_path)
    assert 2_300_000 < init_size < 2_500_000, init_size
    # The bf16 file round-trips exactly to the float32 weights we train from.
    back = load_file(init_path)
    for k, v in sd.items():
        if ".lora_A." in k:
            assert torch.equal(back[k].to(torch.float32), v), k

    # ---------------------------------------------------------------- training
    x = torch.tensor([input_ids])
    y = torch.tensor([labels])
    att = torch.ones_like(x)
    opt = torch.optim.AdamW(lora_params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    pm.train()
    steps = []
    for step in range(1, STEPS + 1):
        opt.zero_grad(set_to_none=True)
        out = pm(input_ids=x, attention_mask=att, labels=y)
        loss = out.loss
        if step == 1:
            # Per-token NLL of the step-1 forward (B = 0, i.e. the base model), every position, for debugging
            # label/shift differences: step1_token_nll[i] = -log p(input_ids[i+1] | input_ids[:i+1]).
            with torch.no_grad():
                logp = torch.log_softmax(out.logits[0].detach().double(), dim=-1)
                step1_nll = (-logp[:-1].gather(1, x[0, 1:, None])[:, 0]).tolist()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(lora_params, MAX_GRAD_NORM)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        steps.append({"step": step, "loss": loss.item(), "grad_norm": gn.item(), "lr": lr})
        print(f"step {step:2d} loss {loss.item():.6f} grad_norm {gn.item():.6f} lr {lr:.6e}", flush=True)
    pm.eval()

    # ---------------------------------------------------------------- generation
    adapter_new, adapter_text = greedy(pm, tok, prompt_ids)
    with pm.disable_adapter():
        base_new, base_text = greedy(pm, tok, prompt_ids)
    print("adapter:", repr(adapter_text))
    print("base:   ", repr(base_text))

    # ---------------------------------------------------------------- output
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "gguf": version("gguf"),
    }
    config = {
        "model": "models/" + GGUF_NAME,
        "dataset": DATASET,
        "seed": SEED,
        "dtype": "float32",
        "device": "cpu",
        "lora": LORA,
        "lora_A_init": "PEFT default (kaiming_uniform a=sqrt(5)) after torch.manual_seed(0), then rounded to bfloat16",
        "lora_B_init": "zeros",
        "optimizer": {
            "name": "torch.optim.AdamW",
            "lr": LR,
            "betas": list(BETAS),
            "eps": EPS,
            "weight_decay": WEIGHT_DECAY,
        },
        "scheduler": {
            "name": "cosine",
            "fn": "transformers.get_cosine_schedule_with_warmup",
            "num_warmup_steps": WARMUP,
            "num_training_steps": STEPS,
            "formula": "lr_k = lr * 0.5 * (1 + cos(pi * (k-1) / steps)) for step k = 1..steps",
        },
        "max_grad_norm": MAX_GRAD_NORM,
        "grad_clip": "torch.nn.utils.clip_grad_norm_(lora_params, 1.0); grad_norm = returned pre-clip total L2 norm",
        "batch_size": 1,
        "steps": STEPS,
        "labels": "assistant-only: {% generation %}-tagged template (" + MASKS + " tagged_template), "
        "labels = input_ids where assistant_masks == 1 else -100; HF loss shifts internally "
        "(logits[t] predicts labels[t+1]) and averages over the label tokens",
        "generation": {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "prompt": "user message only, add_generation_prompt=True"},
        "trainable_params": n_trainable,
    }
    ref = {
        "config": config,
        "messages": messages,
        "text": plain_text,
        "input_ids": input_ids,
        "labels": labels,
        "num_label_tokens": n_label,
        "label_text": label_text,
        "initial_lora_A": {"file": INIT_FILE, "tensors": len(init_a), "bytes": init_size, "sha256": sha256(init_path)},
        "steps": steps,
        "step1_token_nll": step1_nll,
        "prompt_text": prompt_text,
        "prompt_ids": prompt_ids,
        "adapter_new_ids": adapter_new,
        "adapter_text": adapter_text,
        "base_new_ids": base_new,
        "base_text": base_text,
        "versions": versions,
    }
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
        f.write("\n")
    write_readme(ref)


def write_readme(ref):
    v = ", ".join(f"{k} {val}" for k, val in ref["versions"].items())
    s = ref["steps"]
    body = f"""# seed-demo

Reference LoRA training run ("demo" config) of models/{GGUF_NAME} on `{DATASET}` (one conversation), computed by
transformers + PEFT (GGUF dequantized to float32), CPU, 2 threads. Layout is HF's (transformers un-permutes the
GGUF q/k rows), so lora_B rows of q_proj/k_proj would be in HF order.

Made by `{SCRIPT}`:

    {COMMAND}

(~2.5 min on 2 cores; deterministic: two runs give byte-identical files.) Versions: {v}.

## Files

- `{INIT_FILE}`: the initial lora_A of every adapted module ({ref['initial_lora_A']['tensors']} tensors,
  bfloat16, {ref['initial_lora_A']['bytes']} bytes), PEFT saved key names, e.g.
  `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` [r, in_features]. Training starts from exactly
  these values (bf16 -> f32 is exact) and lora_B = 0 (not stored).
- `reference.json`:
  - `config`: the recipe below, machine-readable.
  - `messages`, `text` (chat-templated text; the template inserts the default system prompt), `input_ids`
    ({len(ref['input_ids'])} tokens), `labels` (-100 outside the assistant span), `num_label_tokens`
    ({ref['num_label_tokens']}), `label_text` (decoded label tokens).
  - `initial_lora_A`: file name, tensor count, size, sha256.
  - `steps`: 30 x {{`step` (1-based), `loss` (forward pass that step trains on, before its update), `grad_norm`
    (pre-clip total L2 norm over all LoRA params, as returned by clip_grad_norm_), `lr` (lr used by that step's update)}}.
  - `step1_token_nll`: {len(ref['input_ids']) - 1} floats, `step1_token_nll[i]` = -log p(input_ids[i+1] | input_ids[..=i])
    from the step-1 forward pass (lora_B = 0, so the base model), log_softmax in float64 of the float32 logits, at
    every position (labelled or not) — the step-1 loss is the mean of the entries at the label positions minus one.
  - `prompt_text` / `prompt_ids`: user message only, add_generation_prompt=True.
  - `adapter_new_ids` / `adapter_text`: greedy generation with the trained adapter; `base_new_ids` / `base_text`:
    same with the adapter disabled; `max_new_tokens` {MAX_NEW_TOKENS}, eos 2, text decoded with skip_special_tokens.
  - `versions`.

## Recipe

1. Tokenizer: transformers' GGUF tokenizer with the pre-tokenizer set to
   `Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]`
   (as in make_smollm2_fixtures.py). Labels: `apply_chat_template(messages, tokenize=True, return_dict=True,
   return_assistant_tokens_mask=True, chat_template=tagged_template)` with the `{{% generation %}}`-tagged SmolLM2
   template from `{MASKS}`; labels = input_ids where assistant_masks == 1, else -100 (the mask covers the
   assistant content and its `<|im_end|>`, not the role header or the trailing newline). HF's causal-LM loss shifts
   internally (logits at position t are scored against labels[t+1]) and takes the mean over the label tokens.
2. `torch.manual_seed({SEED})`; `get_peft_model(model, LoraConfig(r={LORA['r']}, lora_alpha={LORA['lora_alpha']},
   lora_dropout={LORA['lora_dropout']}, target_modules={LORA['target_modules']}, task_type="CAUSAL_LM"))` (scale
   alpha/r = {LORA['lora_alpha'] / LORA['r']}); every lora_A weight rounded in place to bfloat16 and back to float32;
   lora_B = 0. Trainable parameters: {ref['config']['trainable_params']}.
3. `torch.optim.AdamW(lora_params, lr={LR}, betas={BETAS}, eps={EPS}, weight_decay={WEIGHT_DECAY})`;
   `get_cosine_schedule_with_warmup(opt, num_warmup_steps={WARMUP}, num_training_steps={STEPS})`.
4. For step = 1..{STEPS} (batch 1, the one conversation every step, model in train mode, dropout 0):
   zero grads; forward with labels; backward; `grad_norm = clip_grad_norm_(lora_params, {MAX_GRAD_NORM})`;
   `opt.step()`; `scheduler.step()`.
5. Greedy `generate(max_new_tokens={MAX_NEW_TOKENS}, do_sample=False)` from the prompt, with and without the adapter.

Losses: step 1 {s[0]['loss']:.6f}, step 10 {s[9]['loss']:.6f}, step 30 {s[-1]['loss']:.6f}.

Adapter: {ref['adapter_text']!r}

Base: {ref['base_text']!r}
"""
    with open(os.path.join(OUT, "README.md"), "w", encoding="utf-8") as f:
        f.write(body)


if __name__ == "__main__":
    sys.exit(main())
