#!/usr/bin/env python3
"""Load a LoRA adapter directory with PEFT on a GGUF base (SmolLM2 by default, or Gemma 3) and greedy-generate from a chat prompt.

    $HOME/.cache/ft-reference-venv/bin/python scripts/reference/check_peft_load.py ADAPTER_DIR \
        [--prompt "Which is the best place to learn GenAI?"] [--max-new-tokens 32] [--model models/X.gguf]

ADAPTER_DIR holds adapter_config.json + adapter_model.safetensors (as written by PEFT's save_pretrained or by
`ft train`). The base is models/SmolLM2-135M-Instruct.Q4_1.gguf loaded by transformers (dequantized to float32,
CPU, 2 threads), the tokenizer with the same digit-splitting pre-tokenizer patch as make_smollm2_fixtures.py.
`PeftModel.from_pretrained(base, ADAPTER_DIR)` loads the adapter; the prompt (one user message) goes through the
GGUF's chat template with add_generation_prompt=True; greedy generation (do_sample=False).

stdout: the decoded generated text only (skip_special_tokens).
stderr: the adapter config, the safetensors __metadata__, the keys PEFT loaded, and any missing / unexpected /
        mismatched keys. Exit 1 if PEFT reports missing or unexpected LoRA keys, if a tensor in the file is not the
        one in the loaded model, or if the file holds no LoRA tensor at all.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only

import argparse  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(2)

import peft  # noqa: E402
import transformers  # noqa: E402
from peft import PeftModel  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def smollm_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


GEMMA_TEMPLATE = os.path.join(ROOT, "crates", "ft-data", "src", "templates", "gemma.jinja")


def load_tokenizer(model_dir, gguf_name):
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_name)
    if "smollm" in gguf_name.lower() and "Digits" not in str(tok.backend_tokenizer.pre_tokenizer):
        tok.backend_tokenizer.pre_tokenizer = smollm_pre_tokenizer()
    if tok.chat_template is None and "gemma" in gguf_name.lower():
        # A base Gemma GGUF has no template; ft uses Gemma's own (the same file).
        with open(GEMMA_TEMPLATE) as f:
            tok.chat_template = f.read()
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("adapter_dir")
    ap.add_argument("--prompt", default="Which is the best place to learn GenAI?")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="GGUF file of the base model")
    args = ap.parse_args()

    adir = args.adapter_dir
    for name in (CONFIG, WEIGHTS):
        if not os.path.isfile(os.path.join(adir, name)):
            log(f"error: {os.path.join(adir, name)} not found")
            return 1

    with open(os.path.join(adir, CONFIG)) as f:
        raw_cfg = json.load(f)
    log(f"peft {peft.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    log(f"{CONFIG}: {json.dumps(raw_cfg, sort_keys=True)}")
    with safe_open(os.path.join(adir, WEIGHTS), framework="pt") as f:
        meta = f.metadata() or {}
    log(f"{WEIGHTS} __metadata__: {json.dumps(meta, sort_keys=True)}")
    file_sd = load_file(os.path.join(adir, WEIGHTS))
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in file_sd.values()})
    log(f"{WEIGHTS}: {len(file_sd)} tensors, dtypes {dtypes}")

    model_dir, gguf_name = os.path.split(os.path.abspath(args.model))
    tok = load_tokenizer(model_dir, gguf_name)
    base = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_name, dtype=torch.float32)

    # PeftModel.from_pretrained does not return load_adapter's result (it only warns about missing keys), so record it.
    results = []
    orig_load_adapter = PeftModel.load_adapter

    def recording_load_adapter(self, *a, **kw):
        r = orig_load_adapter(self, *a, **kw)
        results.append(r)
        return r

    PeftModel.load_adapter = recording_load_adapter
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(base, adir)
    finally:
        PeftModel.load_adapter = orig_load_adapter
    model.eval()
    for w in caught:
        msg = str(w.message)
        if "Could not find a config file" in msg or "is_gradient_checkpointing" in msg:
            continue
        log(f"warning ({w.category.__name__}): {msg}")
    assert len(results) == 1, results

    cfg = model.peft_config["default"]
    log(
        f"loaded config: peft_type={cfg.peft_type.value} task_type={cfg.task_type} r={cfg.r} "
        f"lora_alpha={cfg.lora_alpha} lora_dropout={cfg.lora_dropout} use_rslora={cfg.use_rslora} "
        f"target_modules={sorted(cfg.target_modules) if cfg.target_modules is not None else None} "
        f"bias={cfg.bias} fan_in_fan_out={cfg.fan_in_fan_out} use_dora={cfg.use_dora}"
    )

    res = results[0]
    missing = [k for k in res.missing_keys if "lora_" in k]
    unexpected = [k for k in res.unexpected_keys if "lora_" in k]
    other_unexpected = [k for k in res.unexpected_keys if "lora_" not in k]

    # Independent check: every adapter tensor in the model equals the file's (after PEFT's dtype cast).
    model_sd = get_peft_model_state_dict(model, save_embedding_layers=False)
    loaded, not_in_model, differ = [], [], []
    for k, v in file_sd.items():
        if k not in model_sd:
            not_in_model.append(k)
            continue
        m = model_sd[k]
        if m.shape != v.shape or not torch.equal(m.detach().cpu(), v.to(m.dtype)):
            differ.append(k)
        else:
            loaded.append(k)
    not_in_file = [k for k in model_sd if k not in file_sd]

    n_lora = sum(1 for k in loaded if "lora_" in k)
    log(f"loaded {len(loaded)} tensors ({n_lora} LoRA) into the model, e.g.:")
    for k in sorted(loaded)[:4]:
        log(f"  {k} {list(file_sd[k].shape)}")
    if len(loaded) > 4:
        log(f"  ... ({len(loaded) - 4} more)")
    ok = True
    for title, keys, fatal in (
        ("PEFT missing LoRA keys", missing, True),
        ("PEFT unexpected LoRA keys", unexpected, True),
        ("PEFT unexpected non-LoRA keys", other_unexpected, True),
        ("file keys not in the PEFT model", not_in_model, True),
        ("model adapter keys not in the file", not_in_file, True),
        ("tensors that differ after loading", differ, True),
    ):
        if keys:
            ok = ok and not fatal
            log(f"{title} ({len(keys)}):")
            for k in keys[:20]:
                log(f"  {k}")
            if len(keys) > 20:
                log(f"  ... ({len(keys) - 20} more)")
    if n_lora == 0:
        log("error: no LoRA tensor was loaded")
        ok = False
    log("PEFT load: OK" if ok else "PEFT load: FAILED")

    messages = [{"role": "user", "content": args.prompt}]
    prompt_text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    inp = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=inp,
            attention_mask=torch.ones_like(inp),
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            eos_token_id=[i for i in (tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")) if i is not None and i != tok.unk_token_id],
            pad_token_id=tok.pad_token_id,
        )
    new_ids = out[0, inp.shape[1]:].tolist()
    log(f"prompt ids ({len(prompt_ids)}): {prompt_ids}")
    log(f"new ids ({len(new_ids)}): {new_ids}")
    print(tok.decode(new_ids, skip_special_tokens=True), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
