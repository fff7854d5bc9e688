#!/usr/bin/env python3
"""Reference tokenization / NLL / greedy generation / PEFT-LoRA logits for SmolLM2-135M-Instruct (GGUF).

Reads models/SmolLM2-135M-Instruct.Q4_1.gguf (transformers dequantizes it to float32) and writes
tests/fixtures/smollm2/ (see the README.md written there).

Run from the repository root:
    $HOME/.cache/ft-reference-venv/bin/python scripts/reference/make_smollm2_fixtures.py

Deterministic: fixed seeds, float32, CPU, 2 threads.
"""

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    # PEFT stores target_modules from a set: fix str hashing so adapter_config.json is byte-stable.
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import json  # noqa: E402
from importlib.metadata import version  # noqa: E402
import shutil  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

import peft  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL_DIR = os.path.join(ROOT, "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(ROOT, "tests", "fixtures", "smollm2")
SCRIPT = "scripts/reference/make_smollm2_fixtures.py"
COMMAND = "$HOME/.cache/ft-reference-venv/bin/python " + SCRIPT

TOKEN_TEXTS = [
    ("english", "The quick brown fox jumps over the lazy dog. It was a sunny day, wasn't it?"),
    ("latin_accents", "Café naïve über Straße — déjà vu, façade, Ångström, señor."),
    ("cjk", "我爱自然语言处理。今日は良い天気ですね。東京タワー"),
    ("emoji", "👩‍💻 🇫🇷 🎉 hello 👍🏽"),
    ("python", "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n\tif a > b:\n\t\treturn a + b\n    return b - a\n"),
    ("whitespace", "a  b   c\n\n\n   d\t\te"),
    ("numbers", "Call 555-1234 at 3.14159, year 2024"),
    ("chat_special", "<|im_start|>user\nHi<|im_end|>"),
    # Non-ASCII numerics: the only inputs on which "Digits(individual) + ByteLevel" (real SmolLM2) and
    # plain "ByteLevel" (transformers-from-GGUF) differ for this vocab (it has no multi-digit or "Ġ<digit>" tokens).
    ("unicode_numerics", "Area: 5 m², half: ½, Arabic: ٣٤٥"),
]

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Which is the best place to learn GenAI?",
    "Write a haiku about the sea.",
    "List three primary colors.",
]
MAX_NEW_TOKENS = 24

TRAIN_CONVERSATION = [
    {"role": "user", "content": "Which is the best place to learn GenAI?"},
    {"role": "assistant", "content": "The best place to learn GenAI is Chai aur Code by Piyush Garg."},
]
TRAIN_STEPS = 5
TRAIN_LR = 1e-2
PEFT_TEXT = "The best place to learn GenAI is"
LOGITS_HEAD = 2048


def smollm_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def dump_json(name, obj):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def chat_template_ids(tok, messages, **kw):
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    info = {}

    # ---------------------------------------------------------------- tokenizer
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME)
    gguf_pre = str(tok.backend_tokenizer.pre_tokenizer)
    splits_digits = "Digits" in gguf_pre
    tok_gguf = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME)  # kept unmodified, for comparison
    if not splits_digits:
        tok.backend_tokenizer.pre_tokenizer = smollm_pre_tokenizer()
    info["gguf_pre_tokenizer"] = gguf_pre
    info["pre_tokenizer_used"] = str(tok.backend_tokenizer.pre_tokenizer)
    info["pre_tokenizer_patched"] = not splits_digits

    reader = GGUFReader(os.path.join(MODEL_DIR, GGUF_NAME))
    raw_template = reader.fields["tokenizer.chat_template"].contents()
    with open(os.path.join(OUT, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write(raw_template)
    assert tok.chat_template == raw_template
    info["ggml_pre"] = reader.fields["tokenizer.ggml.pre"].contents()

    tokens = []
    for key, text in TOKEN_TEXTS:
        ids = encode(tok, text)
        entry = {"name": key, "text": text, "ids": ids, "decoded": tok.decode(ids)}
        ids_plain = encode(tok_gguf, text)
        if ids_plain != ids:
            entry["ids_bytelevel_only"] = ids_plain
        tokens.append(entry)
    chat = next(t for t in tokens if t["name"] == "chat_special")
    assert chat["ids"][0] == 1 and chat["ids"][-1] == 2, chat["ids"]
    dump_json("tokens.json", tokens)

    # ---------------------------------------------------------------- model
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME, dtype=torch.float32)
    model = model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied

    # ---------------------------------------------------------------- NLL
    nll = []
    for t in tokens:
        ids = t["ids"]
        if len(ids) < 4:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()  # [T, V] float32
        logp = torch.log_softmax(logits.double(), dim=-1)  # float64 log-softmax of the float32 logits
        tgt = torch.tensor(ids[1:])
        per = (-logp[:-1].gather(1, tgt[:, None])[:, 0]).tolist()
        nll.append({"name": t["name"], "text": t["text"], "ids": ids, "nll": per, "nll_mean": sum(per) / len(per)})
    dump_json("nll.json", nll)

    # ---------------------------------------------------------------- greedy generation
    gens = []
    for p in CHAT_PROMPTS:
        messages = [{"role": "user", "content": p}]
        prompt_text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = encode(tok, prompt_text)
        assert prompt_ids == chat_template_ids(tok, messages, add_generation_prompt=True), p
        inp = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = model.generate(
                inp,
                attention_mask=torch.ones_like(inp),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        new_ids = out[0, inp.shape[1]:].tolist()
        gens.append(
            {
                "messages": messages,
                "prompt_text": prompt_text,
                "prompt_ids": prompt_ids,
                "max_new_tokens": MAX_NEW_TOKENS,
                "new_ids": new_ids,
                "text": tok.decode(new_ids, skip_special_tokens=True),
                "stopped_on_eos": bool(new_ids and new_ids[-1] == tok.eos_token_id),
            }
        )
    dump_json("generate.json", gens)

    # ---------------------------------------------------------------- PEFT LoRA
    torch.manual_seed(0)
    cfg = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    train_ids = chat_template_ids(tok, TRAIN_CONVERSATION)
    assert train_ids == encode(tok, tok.apply_chat_template(TRAIN_CONVERSATION, tokenize=False))
    x = torch.tensor([train_ids])
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=TRAIN_LR)
    pm.train()
    losses = []
    for _ in range(TRAIN_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = pm(x, attention_mask=torch.ones_like(x), labels=x).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    pm.eval()
    adir = os.path.join(OUT, "peft-adapter")
    pm.save_pretrained(adir)
    os.remove(os.path.join(adir, "README.md"))  # PEFT's boilerplate model card
    # base_model_name_or_path would be the local models/ path; make it machine-independent.
    cpath = os.path.join(adir, "adapter_config.json")
    with open(cpath) as f:
        acfg = json.load(f)
    acfg["base_model_name_or_path"] = GGUF_NAME
    with open(cpath, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)

    ids = encode(tok, PEFT_TEXT)
    inp = torch.tensor([ids], dtype=torch.int64)
    ref = {"input_ids": inp}
    with torch.no_grad():
        la = pm(inp).logits.float()
        with pm.disable_adapter():
            lb = pm(inp).logits.float()
    for prefix, lg in (("adapter_", la), ("base_", lb)):
        ref[prefix + "logits_head"] = lg[:, :, :LOGITS_HEAD].contiguous()
        ref[prefix + "logsumexp"] = torch.logsumexp(lg, dim=-1).contiguous()
        ref[prefix + "argmax"] = lg.argmax(dim=-1).to(torch.int64).contiguous()
    save_file(ref, os.path.join(OUT, "peft_reference.safetensors"))
    dump_json(
        "peft_training.json",
        {
            "conversation": TRAIN_CONVERSATION,
            "input_ids": train_ids,
            "steps": TRAIN_STEPS,
            "lr": TRAIN_LR,
            "losses": losses,
            "eval_text": PEFT_TEXT,
            "eval_ids": ids,
            "adapter_argmax": ref["adapter_argmax"][0].tolist(),
            "base_argmax": ref["base_argmax"][0].tolist(),
            "max_abs_logit_diff_adapter_vs_base": (la - lb).abs().max().item(),
        },
    )

    write_readme(info, tokens, nll, gens, losses, len(ids))

    # ---------------------------------------------------------------- summary
    print(json.dumps(info, indent=1))
    digits = next(t for t in TOKEN_TEXTS if t[0] == "numbers")[1]
    print("digits text ids (used):        ", encode(tok, digits))
    print("digits text ids (GGUF as-is):  ", encode(tok_gguf, digits))
    for t in tokens:
        if "ids_bytelevel_only" in t:
            print(f"{t['name']}: used {t['ids']} vs bytelevel-only {t['ids_bytelevel_only']}")
    for n in nll:
        print(f"nll_mean {n['name']}: {n['nll_mean']:.6f}")
    for g in gens:
        print(repr(g["messages"][0]["content"]), "->", repr(g["text"]))
    print("training losses:", losses)


def write_readme(info, tokens, nll, gens, losses, t_len):
    v = (
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"gguf {version('gguf')}, tokenizers {tokenizers.__version__}"
    )
    patched = info["pre_tokenizer_patched"]
    tok_note = (
        "transformers builds the GGUF tokenizer with pre_tokenizer "
        f"`{info['gguf_pre_tokenizer']}` (no digit splitting), although the GGUF says "
        f"`tokenizer.ggml.pre = \"{info['ggml_pre']}\"` (llama.cpp: split every `\\p{{N}}` first, then GPT-2 regex). "
        "The script therefore sets `Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, "
        "trim_offsets=True, use_regex=True)]`, the pre_tokenizer of the published HF tokenizer.json. For ASCII digits "
        "both give the same ids (the vocab has no multi-digit or `Ġ<digit>` tokens); they differ only around non-ASCII "
        "numerics (`²`, `½`, Arabic-Indic digits, ...) — entries where they differ carry `ids_bytelevel_only`."
        if patched
        else f"transformers' GGUF tokenizer already splits digits (`{info['gguf_pre_tokenizer']}`)."
    )
    body = f"""# smollm2

References for models/SmolLM2-135M-Instruct.Q4_1.gguf, computed by transformers' GGUF loader (dequantized to
float32, tied embeddings, q/k rows un-permuted by the loader), CPU, 2 threads. Everything here is in HF layout:
llama.cpp's converter permutes the rows of attn_q/attn_k (per head, interleaved-pair RoPE order); transformers
undoes that (`LlamaTensorProcessor._reverse_permute_weights`) and applies rotate-half RoPE, so
`q_proj.weight == unpermute(dequant(blk.N.attn_q.weight))` exactly, and the adapter's q_proj `lora_B` rows are
in that HF order too.

Made by `{SCRIPT}`:

    {COMMAND}

Versions: {v}.

Tokenizer: {tok_note}

## Files

- `tokens.json`: list of {{`name`, `text`, `ids`, `decoded`}} ({len(tokens)} entries), `ids` = tok(text,
  add_special_tokens=False); `decoded` = tok.decode(ids) (special tokens kept). `<|im_start|>`=1, `<|im_end|>`=2.
- `nll.json`: list of {{`name`, `text`, `ids`, `nll`, `nll_mean`}} for the {len(nll)} texts with >= 4 tokens;
  `nll[i-1]` = -log p(ids[i] | ids[:i]) for i = 1..n-1 (no BOS added), log_softmax in float64 of the float32 logits.
- `generate.json`: list of {{`messages`, `prompt_text`, `prompt_ids`, `max_new_tokens`, `new_ids`, `text`,
  `stopped_on_eos`}}; `prompt_text` = apply_chat_template(add_generation_prompt=True) (the template inserts the
  default system prompt), `prompt_ids` = tok(prompt_text, add_special_tokens=False) (asserted equal to
  apply_chat_template(tokenize=True)); greedy `generate(max_new_tokens={MAX_NEW_TOKENS}, do_sample=False)`, eos 2
  (when hit it is the last of `new_ids`); `text` = decode(new_ids, skip_special_tokens=True).
- `chat_template.jinja`: the GGUF's raw `tokenizer.chat_template` string.
- `peft-adapter/`: PEFT adapter, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=[q_proj, v_proj],
  task_type=CAUSAL_LM), torch.manual_seed(0), then {TRAIN_STEPS} AdamW steps (torch defaults, lr {TRAIN_LR}) on the
  chat-templated conversation in `peft_training.json` (labels = input_ids; losses {", ".join(f"{x:.4f}" for x in losses)}).
  `base_model_name_or_path` in adapter_config.json is rewritten to the GGUF file name.
- `peft_training.json`: the training conversation, its ids, the per-step losses, eval ids and argmaxes.
- `peft_reference.safetensors`, for `{PEFT_TEXT}` (T = {t_len}, no special tokens):
  - `input_ids` int64 [1, {t_len}]
  - `adapter_logits_head` / `base_logits_head` float32 [1, {t_len}, {LOGITS_HEAD}] = logits[:, :, :{LOGITS_HEAD}]
  - `adapter_logsumexp` / `base_logsumexp` float32 [1, {t_len}] = logsumexp over all 49152 logits
  - `adapter_argmax` / `base_argmax` int64 [1, {t_len}]
  (`adapter_` = with the LoRA adapter, `base_` = same model with the adapter disabled.)
"""
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(body)


if __name__ == "__main__":
    sys.exit(main())
