#!/usr/bin/env python3
"""Tiny random HF-format models + reference logits / LoRA gradients for the `ft` Rust tests.

Writes tests/fixtures/{tiny-llama,tiny-llama3,tiny-qwen2}/ (see the README.md written into each).

Run from the repository root:
    $HOME/.cache/ft-reference-venv/bin/python scripts/reference/make_tiny_models.py

Deterministic: fixed seeds, float32, CPU, 2 threads, eager attention.
"""

import json
import os
import shutil
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    # PEFT stores target_modules from a set: fix str hashing so adapter_config.json is byte-stable.
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SCRIPT = "scripts/reference/make_tiny_models.py"
COMMAND = "$HOME/.cache/ft-reference-venv/bin/python " + SCRIPT

VOCAB = 128
BATCH, SEQ = 2, 12
INPUT_SEED = 1234
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def versions():
    return (
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, safetensors {safetensors.__version__}"
    )


# --------------------------------------------------------------------------------------------
# models


def perturb_norms(model):
    """RMSNorm weights := 1 + 0.1*randn (uses the global torch RNG, seeded by the caller)."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape))


def build_tiny_llama():
    cfg = LlamaConfig(
        **COMMON,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    perturb_norms(model)
    return model.float().eval()


def build_tiny_llama3():
    cfg = LlamaConfig(
        **COMMON,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    perturb_norms(model)
    return model.float().eval()


def build_tiny_qwen2():
    cfg = Qwen2Config(
        **COMMON,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    perturb_norms(model)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("_proj.bias"):
                p.copy_(0.1 * torch.randn(p.shape))
    return model.float().eval()


def make_inputs():
    g = torch.Generator().manual_seed(INPUT_SEED)
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int64)
    attention_mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
    attention_mask[1, -4:] = 0  # right padding on row 1
    return input_ids, attention_mask


# --------------------------------------------------------------------------------------------
# config.json layout


def rewrite_config_classic(model_dir):
    """transformers 5 writes RoPE settings only as `rope_parameters: {rope_theta, rope_type, ...}`.
    Hub checkpoints written by transformers 4 (SmolLM2, Llama 3.x, Qwen2.5, ...) instead have a
    top-level `rope_theta` and, for scaled RoPE, `rope_scaling`. Keep the transformers-5 file as
    ../config.rope_parameters.json and rewrite model/config.json in the classic layout.
    The caller asserts that transformers reloads the rewritten config to identical logits."""
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    shutil.copyfile(path, os.path.join(os.path.dirname(model_dir), "config.rope_parameters.json"))
    rp = dict(cfg.pop("rope_parameters"))
    out = {}
    for k, v in cfg.items():
        out[k] = v
    out["rope_theta"] = rp.pop("rope_theta")
    if rp.get("rope_type", "default") != "default":
        out["rope_scaling"] = rp
    out = dict(sorted(out.items()))
    with open(path, "w") as f:
        json.dump(out, f, indent=2, sort_keys=True)
        f.write("\n")


def forward_logits(model, input_ids, attention_mask):
    with torch.no_grad():
        return model(input_ids, attention_mask=attention_mask).logits.float().contiguous()


def save_base_fixture(name, model, max_shard_size=None):
    fdir = os.path.join(FIXTURES, name)
    mdir = os.path.join(fdir, "model")
    if os.path.isdir(fdir):
        shutil.rmtree(fdir)
    os.makedirs(fdir)
    kw = {"safe_serialization": True}
    if max_shard_size is not None:
        kw["max_shard_size"] = max_shard_size
    model.save_pretrained(mdir, **kw)
    rewrite_config_classic(mdir)

    input_ids, attention_mask = make_inputs()
    logits = forward_logits(model, input_ids, attention_mask)
    assert logits.shape == (BATCH, SEQ, VOCAB)

    # The saved checkpoint (with the rewritten config) must reproduce the in-memory model exactly.
    reloaded = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32, attn_implementation="eager").eval()
    assert reloaded.config.rope_parameters == model.config.rope_parameters, (
        reloaded.config.rope_parameters,
        model.config.rope_parameters,
    )
    relogits = forward_logits(reloaded, input_ids, attention_mask)
    assert torch.equal(relogits, logits), (relogits - logits).abs().max()

    save_file(
        {"input_ids": input_ids, "attention_mask": attention_mask, "logits": logits},
        os.path.join(fdir, "reference.safetensors"),
    )
    return fdir, input_ids, attention_mask, logits


# --------------------------------------------------------------------------------------------
# LoRA


def lora_model(base, use_rslora):
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
        use_rslora=use_rslora,
    )
    torch.manual_seed(0)  # lora_A init (kaiming-uniform) draws from the global RNG
    pm = get_peft_model(base, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in sorted(pm.named_parameters()):
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape))
    return pm


def saved_key(param_name):
    # PEFT drops the adapter name ("default") from the keys it saves.
    return param_name.replace(".default.", ".")


def run_lora(fdir, use_rslora, input_ids, attention_mask):
    base = build_tiny_llama()
    pm = lora_model(base, use_rslora)
    adir = os.path.join(fdir, "adapter-rslora" if use_rslora else "adapter")
    pm.save_pretrained(adir)
    os.remove(os.path.join(adir, "README.md"))  # PEFT's boilerplate model card

    labels = input_ids.clone()
    labels[attention_mask == 0] = -100

    pm.train()  # dropout is 0; train() only so that autograd bookkeeping is the usual one
    pm.zero_grad(set_to_none=True)
    out = pm(input_ids, attention_mask=attention_mask, labels=labels)
    out.loss.backward()

    tensors = {
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().float().reshape(()).contiguous(),
    }
    if not use_rslora:
        tensors["labels"] = labels
        saved = load_file(os.path.join(adir, "adapter_model.safetensors"))
        sd_keys = set(get_peft_model_state_dict(pm).keys())
        assert sd_keys == set(saved.keys()), (sorted(sd_keys ^ set(saved.keys())))[:10]
        n = 0
        for name, p in sorted(pm.named_parameters()):
            if not p.requires_grad:
                continue
            assert "lora_" in name, name
            key = saved_key(name)
            assert key in saved, (name, key)
            assert torch.equal(saved[key], p.detach()), key
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            tensors["grad." + key] = p.grad.detach().float().contiguous()
            n += 1
        assert n == len(saved) == 2 * len(LORA_TARGETS) * 2, (n, len(saved))
        fname = "lora_reference.safetensors"
    else:
        fname = "lora_rslora_reference.safetensors"
    save_file(tensors, os.path.join(fdir, fname))
    return out.loss.item()


# --------------------------------------------------------------------------------------------
# READMEs

BASE_FILES = """\
- `model/`: HF checkpoint written by `save_pretrained(..., safe_serialization=True)` (float32){shard_note}.
  `model/config.json` is rewritten to the classic Hub layout (top-level `rope_theta`{scaling_note});
  transformers {tv} itself writes RoPE settings only as `rope_parameters` — that original file is kept as
  `config.rope_parameters.json`. The script asserts that transformers reloads the rewritten config to
  bit-identical logits.
- `reference.safetensors`:
  - `input_ids` int64 [2, 12] (torch.randint(0, 128), generator seed {seed})
  - `attention_mask` int64 [2, 12] (row 0 all ones; row 1 = 8 ones then 4 zeros, right padding)
  - `logits` float32 [2, 12, 128] = `model(input_ids, attention_mask=attention_mask).logits`
    (eager attention, positions 0..11 for both rows; pad *keys* are masked, pad *queries* still
    produce logits — compare only positions where attention_mask == 1 if your masking differs there)
"""

LORA_FILES = """\
- `adapter/`: PEFT adapter (`adapter_config.json`, `adapter_model.safetensors`), LoraConfig(r=4, lora_alpha=8,
  lora_dropout=0.0, target_modules=q,k,v,o,gate,up,down _proj, task_type=CAUSAL_LM); lora_A = PEFT init after
  torch.manual_seed(0), every lora_B := 0.1*randn after torch.manual_seed(1). Scale = alpha/r = 2.
- `lora_reference.safetensors` (same `input_ids`/`attention_mask` as reference.safetensors):
  - `labels` int64 [2, 12] = input_ids with -100 where attention_mask == 0
  - `logits` float32 [2, 12, 128] (LoRA model)
  - `loss` float32 scalar (0-dim) = transformers causal-LM loss: mean CE of logits[:, :-1] vs labels[:, 1:],
    ignoring -100 (= {loss:.6f})
  - `grad.<key>` float32, one per LoRA tensor, `<key>` exactly as in adapter_model.safetensors, e.g.
    `grad.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` [4, 64]
    (lora_A: [r, in_features], lora_B: [out_features, r]); 28 tensors.
- `adapter-rslora/` + `lora_rslora_reference.safetensors` (`logits` [2, 12, 128] f32, `loss` 0-dim f32 = {loss_rs:.6f}):
  same seeds and inputs with `use_rslora=True` (scale = alpha/sqrt(r) = 4).
"""


def write_readme(fdir, title, desc, shard_note="", scaling_note="", lora=None):
    body = f"# {title}\n\n{desc}\n\nMade by `{SCRIPT}`:\n\n    {COMMAND}\n\n"
    body += f"Versions: {versions()} (CPU, float32, `attn_implementation=\"eager\"`).\n\n## Files\n\n"
    body += BASE_FILES.format(shard_note=shard_note, scaling_note=scaling_note, tv=transformers.__version__, seed=INPUT_SEED)
    if lora is not None:
        body += LORA_FILES.format(loss=lora[0], loss_rs=lora[1])
    with open(os.path.join(fdir, "README.md"), "w") as f:
        f.write(body)


def main():
    # tiny-llama (sharded) + LoRA references
    model = build_tiny_llama()
    fdir, input_ids, attention_mask, _ = save_base_fixture("tiny-llama", model, max_shard_size="60KB")
    shards = [f for f in os.listdir(os.path.join(fdir, "model")) if f.endswith(".safetensors")]
    assert len(shards) >= 2 and os.path.exists(os.path.join(fdir, "model", "model.safetensors.index.json"))
    loss = run_lora(fdir, False, input_ids, attention_mask)
    loss_rs = run_lora(fdir, True, input_ids, attention_mask)
    write_readme(
        fdir,
        "tiny-llama",
        "Random LlamaForCausalLM: vocab 128, hidden 64, intermediate 96, 2 layers, 4 heads, 2 kv heads (head_dim 16),\n"
        "rope_theta 1e4, rms_norm_eps 1e-5, untied lm_head. torch.manual_seed(0) then default init (std 0.02);\n"
        "every RMSNorm weight := 1 + 0.1*randn.",
        shard_note=f", sharded into {len(shards)} files + `model.safetensors.index.json` (max_shard_size=\"60KB\")",
        lora=(loss, loss_rs),
    )
    print(f"tiny-llama: {len(shards)} shards, lora loss {loss:.6f}, rslora loss {loss_rs:.6f}")

    # tiny-llama3
    model = build_tiny_llama3()
    fdir, input_ids, attention_mask, logits = save_base_fixture("tiny-llama3", model)
    plain_cfg = LlamaConfig(**{**model.config.to_dict(), "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})
    plain = LlamaForCausalLM(plain_cfg).eval()
    plain.load_state_dict(model.state_dict())
    scaling_effect = (forward_logits(plain, input_ids, attention_mask) - logits).abs().max().item()
    assert scaling_effect > 1e-3, scaling_effect
    write_readme(
        fdir,
        "tiny-llama3",
        "Like tiny-llama but with Llama-3 RoPE scaling (`rope_type=llama3`, factor 8, low_freq_factor 1,\n"
        "high_freq_factor 4, original_max_position_embeddings 16; max_position_embeddings 128) and tied\n"
        "embeddings (no lm_head.weight in the file). Single model.safetensors. With head_dim 16 and theta 1e4 the 8\n"
        "RoPE wavelengths are 2*pi*1e4^(2i/16) = 6.3, 19.9, 62.8, ... 19869 positions: the first lies between\n"
        "high_freq_wavelen 4 and low_freq_wavelen 16 (smoothed, smooth factor 0.515), the other 7 are divided by 8;\n"
        "no frequency is left unscaled (that would need a wavelength < 4). Dropping the scaling changes the\n"
        f"reference logits by up to {scaling_effect:.2e} (max abs), so keep test tolerances well below that.",
        scaling_note=" and `rope_scaling`",
    )
    print("tiny-llama3 done")

    # tiny-qwen2
    model = build_tiny_qwen2()
    fdir, *_ = save_base_fixture("tiny-qwen2", model)
    write_readme(
        fdir,
        "tiny-qwen2",
        "Random Qwen2ForCausalLM: same sizes as tiny-llama, rope_theta 1e6, rms_norm_eps 1e-6, tied embeddings,\n"
        "q/k/v biases := 0.1*randn (o_proj has no bias). torch.manual_seed(0); RMSNorm weights := 1 + 0.1*randn,\n"
        "then the biases. Single model.safetensors.",
    )
    print("tiny-qwen2 done")


if __name__ == "__main__":
    sys.exit(main())
