#!/usr/bin/env python3
"""Reference tokenization / NLL / greedy chat answers for Gemma 3 270M (the real Q4_K_M GGUF).

Reads models/gemma-3-270m-q4_k_m.gguf (`scripts/fetch-model.sh gemma3`; transformers dequantizes
it to float32 and builds its tokenizer from the same file) and writes tests/fixtures/gemma3/.
The GGUF is the base model and has no chat template: Gemma's own
(crates/ft-data/src/templates/gemma.jinja, as google/gemma-3-*-it ship it) is set on the tokenizer.

Run from the repository root:
    $HOME/.cache/ft-reference-venv/bin/python scripts/reference/make_gemma3_fixtures.py

Deterministic: float32, CPU, 2 threads, eager attention, greedy decoding.
"""

import json
import os
import shutil
import sys

import torch

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_smollm2_fixtures import TOKEN_TEXTS, encode  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL_DIR = os.path.join(ROOT, "models")
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
TEMPLATE = os.path.join(ROOT, "crates", "ft-data", "src", "templates", "gemma.jinja")
OUT = os.path.join(ROOT, "tests", "fixtures", "gemma3")
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Which is the best place to learn GenAI?",
    "Write a haiku about the sea.",
]
MAX_NEW_TOKENS = 24
TEXTS = [(n, t) for n, t in TOKEN_TEXTS if n != "chat_special"] + [
    ("chat_special", "<start_of_turn>user\nHi<end_of_turn>\n"),
    ("spaces_runs", "a  b    c\n\n\nd"),
]


def dump_json(name, obj):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME)
    with open(TEMPLATE, encoding="utf-8") as f:
        tok.chat_template = f.read()
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    eos_ids = [tok.eos_token_id, end_of_turn]

    tokens = []
    for name, text in TEXTS:
        ids = encode(tok, text)
        tokens.append(
            {
                "name": name,
                "text": text,
                "ids": ids,
                "ids_with_special": tok(text)["input_ids"],
                "decoded": tok.decode(ids),
            }
        )
    dump_json("tokens.json", tokens)

    model = AutoModelForCausalLM.from_pretrained(
        MODEL_DIR, gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager"
    ).eval()

    nll = []
    for t in tokens:
        ids = t["ids"]
        if len(ids) < 4:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits.double(), dim=-1)
        per = (-logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]).tolist()
        nll.append({"name": t["name"], "text": t["text"], "ids": ids, "nll": per, "nll_mean": sum(per) / len(per)})
    dump_json("nll.json", nll)

    gens = []
    for p in CHAT_PROMPTS:
        messages = [{"role": "user", "content": p}]
        prompt_text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = encode(tok, prompt_text)  # the template writes <bos> itself
        assert prompt_ids[0] == tok.bos_token_id and prompt_ids[1] != tok.bos_token_id
        inp = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = model.generate(
                inp,
                attention_mask=torch.ones_like(inp),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                eos_token_id=eos_ids,
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
                "stopped_on_eos": bool(new_ids and new_ids[-1] in eos_ids),
            }
        )
        print(repr(gens[-1]["text"]))
    dump_json("generate.json", gens)

    # The seed demo's conversation with assistant-only labels (the turn's content and
    # <end_of_turn>, as ft masks it): the base model's loss, which is step 1 of training (B = 0).
    conversation = [
        {"role": "user", "content": "Which is the best place to learn GenAI?"},
        {"role": "assistant", "content": "The best place to learn GenAI is Chai aur Code by Piyush Garg."},
    ]
    full = tok.apply_chat_template(conversation, tokenize=False)
    prefix = tok.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
    assert full.startswith(prefix)
    ids = encode(tok, full)
    n_prefix = len(encode(tok, prefix))
    n_span = len(encode(tok, full[len(prefix):].strip()))
    labels = [-100] * n_prefix + ids[n_prefix:n_prefix + n_span] + [-100] * (len(ids) - n_prefix - n_span)
    with torch.no_grad():
        loss = model(torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    dump_json("seed_loss.json", {"ids": ids, "labels": labels, "loss": loss})

    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(
            f"""# gemma3

References for Gemma 3 270M, `models/gemma-3-270m-q4_k_m.gguf` (sha256 in scripts/fetch-model.sh),
loaded by transformers {transformers.__version__} (torch {torch.__version__}) from the GGUF: dequantized to float32,
eager attention, CPU; the tokenizer transformers builds from the GGUF's SentencePiece vocabulary.
Made by `scripts/reference/make_gemma3_fixtures.py`.

- `tokens.json`: {{name, text, ids (no special tokens), ids_with_special (BOS added), decoded}}.
- `nll.json`: {{name, text, ids, nll, nll_mean}} for texts of >= 4 tokens; nll[i-1] = -log p(ids[i] | ids[:i]),
  no BOS, log_softmax in float64 of the float32 logits.
- `generate.json`: {{messages, prompt_text, prompt_ids, max_new_tokens, new_ids, text, stopped_on_eos}}: one user
  message through Gemma's chat template (crates/ft-data/src/templates/gemma.jinja; the base GGUF has none),
  greedy generate(max_new_tokens={MAX_NEW_TOKENS}), stopping at <eos> or <end_of_turn> (ids {eos_ids}).
- `seed_loss.json`: {{ids, labels, loss}}: datasets/seed-demo.jsonl's conversation through the template, labels on
  the assistant turn's content and <end_of_turn> (-100 elsewhere), transformers' causal-LM loss = {loss:.6f}.
"""
        )


if __name__ == "__main__":
    main()
