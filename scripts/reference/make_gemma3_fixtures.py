#!/usr/bin/env python3
"""Reference tokenization / NLL / greedy chat answers for Gemma 3 270M (the real Q4_K_M GGUF).

Reads models/gemma-3-270m-q4_k_m.gguf (`scripts/fetch-model.sh gemma3`; transformers dequantizes
it to float32 and builds its tokenizer from the same file) and writes tests/fixtures/gemma3/
(see the README.md written there).

The GGUF is the *base* model and carries no chat template. Gemma 3's template (google/gemma-3-*-it)
is written out here in a reduced Jinja form (CHAT_TEMPLATE; `chat_template.jinja`) and set on the
tokenizer; the script asserts that it renders exactly like the official one as ft ships it
(crates/ft-data/src/templates/gemma.jinja, read only) on a set of well-formed conversations.

Model checks (asserted): llama.cpp's converter stores Gemma's RMSNorm weights as 1 + w (Gemma
normalizes with x * (1 + w)); transformers' GGUF loader subtracts the 1 back
(Gemma2TensorProcessor, used for gemma3), so every loaded `*norm.weight` must equal the GGUF's
float32 tensor minus 1 exactly. No fix-up is needed with transformers 5.24.

Run from the repository root:
    $HOME/.cache/ft-reference-venv/bin/python scripts/reference/make_gemma3_fixtures.py

Deterministic: float32, CPU, 2 threads, eager attention, greedy decoding.
"""

import hashlib
import json
import os
import shutil
import sys
from importlib.metadata import version

import torch

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_smollm2_fixtures import TOKEN_TEXTS  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL_DIR = os.path.join(ROOT, "models")
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
OFFICIAL_TEMPLATE = os.path.join(ROOT, "crates", "ft-data", "src", "templates", "gemma.jinja")
OUT = os.path.join(ROOT, "tests", "fixtures", "gemma3")
SCRIPT = "scripts/reference/make_gemma3_fixtures.py"
COMMAND = "$HOME/.cache/ft-reference-venv/bin/python " + SCRIPT

BOS_ID, EOS_ID, END_OF_TURN_ID, START_OF_TURN_ID, PAD_ID = 2, 1, 106, 105, 0

# smollm2's texts, Gemma's turn markers in place of ChatML's, then a few Gemma-specific extras.
TEXTS = [
    (n, "<start_of_turn>user\nHi<end_of_turn>" if n == "chat_special" else t) for n, t in TOKEN_TEXTS
] + [
    # extras (not in smollm2's list)
    ("spaces_runs", "a  b    c\n\n\nd"),  # multi-space tokens ("▁▁" ...) vs added "\n\n\n"
    ("leading_space", "  Hello world. "),  # no prefix space is added (add_space_prefix = False)
    ("chat_turns", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"),
    ("user_defined", "<table><tr><td>1</td></tr></table> [multimodal]\t\tx"),  # token_type 4, matched whole
]

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Which is the best place to learn GenAI?",
    "Write a haiku about the sea.",
]
MAX_NEW_TOKENS = 24

# Gemma 3's chat template (google/gemma-3-270m-it), reduced to: for, if/elif/else, loop.first,
# loop.index0, ==, and, +, messages[0]['role'], bos_token, raise_exception, add_generation_prompt.
# Same output as the official one on well-formed conversations (asserted below); unlike it, this
# one does not trim the contents nor check that user/assistant alternate.
CHAT_TEMPLATE = """{{- bos_token -}}
{%- for message in messages -%}
    {%- if message['role'] == 'system' -%}
        {%- if not loop.first -%}
            {{- raise_exception('The system message must be the first message.') -}}
        {%- endif -%}
        {{- '<start_of_turn>user\\n' + message['content'] + '\\n\\n' -}}
    {%- elif message['role'] == 'user' -%}
        {%- if loop.index0 == 1 and messages[0]['role'] == 'system' -%}
            {{- message['content'] + '<end_of_turn>\\n' -}}
        {%- else -%}
            {{- '<start_of_turn>user\\n' + message['content'] + '<end_of_turn>\\n' -}}
        {%- endif -%}
    {%- elif message['role'] == 'assistant' or message['role'] == 'model' -%}
        {{- '<start_of_turn>model\\n' + message['content'] + '<end_of_turn>\\n' -}}
    {%- else -%}
        {{- raise_exception('Unknown role: ' + message['role']) -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\\n' -}}
{%- endif -%}
"""

TEMPLATE_CHECKS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour.\nJust one."},
    ],
]

SEED_CONVERSATION = [
    {"role": "user", "content": "Which is the best place to learn GenAI?"},
    {"role": "assistant", "content": "The best place to learn GenAI is Chai aur Code by Piyush Garg."},
]


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


def tokenizer_structure(tok):
    """The backend tokenizer's JSON without the vocab/merges/added tokens, plus fingerprints of those."""
    j = json.loads(tok.backend_tokenizer.to_str())
    model = j.pop("model")
    added = j.pop("added_tokens")
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model.pop("merges")]
    vocab = model.pop("vocab")
    j["model"] = model
    j["model_vocab_size"] = len(vocab)
    j["model_merges_count"] = len(merges)
    j["model_merges_first_40"] = merges[:40]
    j["model_merges_sha256"] = hashlib.sha256("\n".join(a + " " + b for a, b in merges).encode("utf-8")).hexdigest()
    j["model_vocab_respelled_space_tokens"] = {k: v for k, v in vocab.items() if k and set(k) == {"\u2581"}}
    flags = sorted({(a["special"], a["normalized"], a["lstrip"], a["rstrip"], a["single_word"]) for a in added})
    j["added_tokens_summary"] = {
        "count": len(added),
        "special": sum(a["special"] for a in added),
        "non_special": sum(not a["special"] for a in added),
        "flags_(special,normalized,lstrip,rstrip,single_word)": flags,
        "non_special_ids": [a["id"] for a in added if not a["special"]],
    }
    return j


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    gguf_path = os.path.join(MODEL_DIR, GGUF_NAME)
    reader = GGUFReader(gguf_path)
    meta = {
        k: reader.fields[k].contents()
        for k in [
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_eos_token",
            "tokenizer.ggml.add_space_prefix",
        ]
    }
    assert "tokenizer.chat_template" not in reader.fields  # base model

    # ---------------------------------------------------------------- tokenizer
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME)
    assert tok.chat_template is None
    tok.chat_template = CHAT_TEMPLATE
    ids_of = {s: tok.convert_tokens_to_ids(s) for s in ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
                                                         "<start_of_turn>", "<end_of_turn>", "\n"]}
    assert (ids_of["<bos>"], ids_of["<eos>"], ids_of["<end_of_turn>"], ids_of["<start_of_turn>"], ids_of["<pad>"]) == (
        BOS_ID, EOS_ID, END_OF_TURN_ID, START_OF_TURN_ID, PAD_ID), ids_of
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (BOS_ID, EOS_ID)
    eos_ids = [EOS_ID, END_OF_TURN_ID]
    structure = tokenizer_structure(tok)
    structure["gguf_metadata"] = meta
    structure["special_ids"] = ids_of
    dump_json("tokenizer_structure.json", structure)

    # chat template: reduced form == official form
    with open(os.path.join(OUT, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write(CHAT_TEMPLATE)
    with open(OFFICIAL_TEMPLATE, encoding="utf-8") as f:
        official = f.read()
    for conv in TEMPLATE_CHECKS:
        for agp in (False, True):
            mine = tok.apply_chat_template(conv, add_generation_prompt=agp, tokenize=False)
            ref = tok.apply_chat_template(conv, add_generation_prompt=agp, tokenize=False, chat_template=official)
            assert mine == ref, (conv, agp, mine, ref)

    tokens = []
    for name, text in TEXTS:
        ids = encode(tok, text)
        with_special = tok(text)["input_ids"]
        assert with_special == [BOS_ID] + ids, name
        tokens.append(
            {
                "name": name,
                "text": text,
                "ids": ids,
                "ids_with_special": with_special,
                "decoded": tok.decode(ids),
                "pieces": tok.convert_ids_to_tokens(ids),
            }
        )
    dump_json("tokens.json", tokens)

    # ---------------------------------------------------------------- model
    model = AutoModelForCausalLM.from_pretrained(
        MODEL_DIR, gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    # Norm weights: loaded == GGUF (1 + w) - 1, for every norm of the model.
    raw = {t.name: t for t in reader.tensors}
    hf_to_gguf = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
                  "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
                  "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
    n_norms = 0
    for name, p in model.named_parameters():
        if "norm" not in name:
            continue
        if name == "model.norm.weight":
            gname = "output_norm.weight"
        else:
            layer = name.split(".")[2]
            sub = name[len(f"model.layers.{layer}."):-len(".weight")]
            gname = f"blk.{layer}.{hf_to_gguf[sub]}.weight"
        t = raw[gname]
        assert t.tensor_type.name == "F32", gname
        stored = torch.from_numpy(np.array(t.data, dtype=np.float32)).reshape(p.shape)
        assert torch.equal(p.detach(), stored - 1.0), name
        n_norms += 1
    assert n_norms == 18 * 6 + 1, n_norms

    # ---------------------------------------------------------------- NLL
    def per_token_nll(ids):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()  # [T, V] float32
        logp = torch.log_softmax(logits.double(), dim=-1)  # float64 log-softmax of the float32 logits
        return (-logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]).tolist()

    nll = []
    for t in tokens:
        ids = t["ids"]
        if len(ids) < 4:
            continue
        per = per_token_nll(ids)
        per_bos = per_token_nll([BOS_ID] + ids)
        nll.append(
            {
                "name": t["name"],
                "text": t["text"],
                "ids": ids,
                "nll": per,
                "nll_mean": sum(per) / len(per),
                "ids_bos": [BOS_ID] + ids,
                "nll_bos": per_bos,
                "nll_mean_bos": sum(per_bos) / len(per_bos),
            }
        )
    dump_json("nll.json", nll)

    # ---------------------------------------------------------------- greedy generation
    gens = []
    for p in CHAT_PROMPTS:
        messages = [{"role": "user", "content": p}]
        prompt_text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = encode(tok, prompt_text)  # the template writes <bos> itself
        assert prompt_ids == chat_template_ids(tok, messages, add_generation_prompt=True), p
        assert prompt_ids[0] == BOS_ID and prompt_ids[1] != BOS_ID and prompt_ids.count(BOS_ID) == 1, prompt_ids
        inp = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = model.generate(
                inp,
                attention_mask=torch.ones_like(inp),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                eos_token_id=eos_ids,
                pad_token_id=PAD_ID,
                return_dict_in_generate=True,
                output_logits=True,
            )
        new_ids = out.sequences[0, inp.shape[1]:].tolist()
        margins = []
        for step, lg in enumerate(out.logits):
            top = torch.topk(lg[0].float(), 2)
            assert top.indices[0].item() == new_ids[step]
            margins.append((top.values[0] - top.values[1]).item())
        gens.append(
            {
                "messages": messages,
                "prompt_text": prompt_text,
                "prompt_ids": prompt_ids,
                "max_new_tokens": MAX_NEW_TOKENS,
                "eos_ids": eos_ids,
                "new_ids": new_ids,
                "text": tok.decode(new_ids, skip_special_tokens=True),
                "stopped_on_eos": bool(new_ids and new_ids[-1] in eos_ids),
                "top2_logit_margins": margins,
            }
        )
    dump_json("generate.json", gens)

    # ---------------------------------------------------------------- seed-demo step-1 loss
    # The seed demo's conversation with assistant-only labels (the turn's content and
    # <end_of_turn>, as ft masks it): the base model's loss, which is step 1 of training (B = 0).
    full = tok.apply_chat_template(SEED_CONVERSATION, tokenize=False)
    prefix = tok.apply_chat_template(SEED_CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    assert full.startswith(prefix)
    ids = encode(tok, full)
    n_prefix = len(encode(tok, prefix))
    n_span = len(encode(tok, full[len(prefix):].strip()))
    labels = [-100] * n_prefix + ids[n_prefix:n_prefix + n_span] + [-100] * (len(ids) - n_prefix - n_span)
    with torch.no_grad():
        loss = model(torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    dump_json("seed_loss.json", {"ids": ids, "labels": labels, "loss": loss})

    write_readme(meta, ids_of, structure, tokens, nll, gens, loss)

    # ---------------------------------------------------------------- summary / sanity
    print("special ids:", ids_of)
    print("gguf:", meta)
    for t in tokens:
        rt = t["decoded"] == t["text"]
        print(f"{t['name']:16s} {len(t['ids']):3d} tokens, decode round-trips: {rt}")
    for n in nll:
        print(f"nll_mean {n['name']:16s} {n['nll_mean']:.4f}   with BOS {n['nll_mean_bos']:.4f}")
    for g in gens:
        print(repr(g["messages"][0]["content"]), "->", repr(g["text"]),
              f"(stopped_on_eos={g['stopped_on_eos']}, min top-2 margin {min(g['top2_logit_margins']):.4f})")
    print("seed loss:", loss)


def write_readme(meta, ids_of, structure, tokens, nll, gens, loss):
    v = (
        f"torch {torch.__version__}, transformers {transformers.__version__}, gguf {version('gguf')}, "
        f"tokenizers {tokenizers.__version__}"
    )
    n_extra = len(tokens) - len(TOKEN_TEXTS)
    newline_id = ids_of["\n"]
    body = f"""# gemma3

References for Gemma 3 270M (base), `models/gemma-3-270m-q4_k_m.gguf` (`scripts/fetch-model.sh gemma3`; sha256
there), loaded by transformers' GGUF loader: dequantized to float32, eager attention, tied embeddings, CPU, 2
threads. The loader subtracts 1 from every `*norm.weight` (llama.cpp's converter stores Gemma's 1 + w); the script
asserts loaded == GGUF - 1 exactly for all {18 * 6 + 1} norms, so no fix-up was needed. The tokenizer is the one
transformers builds from the GGUF (see `tokenizer_structure.json`).

Made by `{SCRIPT}` (~1.5 min):

    {COMMAND}

Versions: {v}.

Special ids: `<pad>`={ids_of['<pad>']}, `<eos>`={ids_of['<eos>']}, `<bos>`={ids_of['<bos>']},
`<unk>`={ids_of['<unk>']}, `<mask>`={ids_of['<mask>']}, `<start_of_turn>`={ids_of['<start_of_turn>']},
`<end_of_turn>`={ids_of['<end_of_turn>']}, `\\n`={newline_id}. GGUF: add_bos_token
{meta['tokenizer.ggml.add_bos_token']}, add_space_prefix {meta['tokenizer.ggml.add_space_prefix']}.

## Files

- `tokens.json`: list of {{`name`, `text`, `ids`, `ids_with_special`, `decoded`, `pieces`}} ({len(tokens)} entries:
  make_smollm2_fixtures.py's TOKEN_TEXTS with `chat_special` = `<start_of_turn>user\\nHi<end_of_turn>`, then
  {n_extra} extras). `ids` = tok(text, add_special_tokens=False); `ids_with_special` = tok(text) = [2] + ids;
  `decoded` = tok.decode(ids) (special tokens kept); `pieces` = the vocabulary strings of `ids`.
- `nll.json`: list of {{`name`, `text`, `ids`, `nll`, `nll_mean`, `ids_bos`, `nll_bos`, `nll_mean_bos`}} for the
  {len(nll)} texts with >= 4 tokens; `nll[i-1]` = -log p(ids[i] | ids[:i]) for i = 1..n-1 (no BOS added),
  log_softmax in float64 of the float32 logits; `nll_bos` the same over `ids_bos` = [2] + ids (n values).
  Gemma expects BOS: without it the NLL is much higher.
- `generate.json`: list of {{`messages`, `prompt_text`, `prompt_ids`, `max_new_tokens`, `eos_ids`, `new_ids`,
  `text`, `stopped_on_eos`, `top2_logit_margins`}}; `prompt_text` = apply_chat_template(add_generation_prompt=True)
  with `chat_template.jinja`, `prompt_ids` = tok(prompt_text, add_special_tokens=False) (the template writes
  `<bos>`, once; asserted equal to apply_chat_template(tokenize=True)); greedy
  `generate(max_new_tokens={MAX_NEW_TOKENS}, do_sample=False)` stopping at `<eos>` or `<end_of_turn>` (ids [1, 106]; when
  hit it is the last of `new_ids`); `text` = decode(new_ids, skip_special_tokens=True); `top2_logit_margins[k]`
  = top-1 minus top-2 logit at step k (small values are where an implementation may legitimately flip). This is
  the base model: it does not answer, it echoes the question (llama.cpp on the same GGUF does the same).
- `chat_template.jinja`: Gemma 3's chat template (the base GGUF has none) in a reduced Jinja form: `<bos>`, a
  system message folded into the first user turn (`content + "\\n\\n"`), roles `user` / `model` (`assistant` ->
  `model`), `<start_of_turn>{{role}}\\n{{content}}<end_of_turn>\\n`, generation prompt `<start_of_turn>model\\n`.
  Asserted to render exactly as crates/ft-data/src/templates/gemma.jinja (the official template) on
  {len(TEMPLATE_CHECKS)} conversations x add_generation_prompt; unlike it, it does not trim contents nor check
  that roles alternate.
- `seed_loss.json`: {{`ids`, `labels`, `loss`}}: datasets/seed-demo.jsonl's conversation through the template,
  labels on the assistant turn's content and `<end_of_turn>` (-100 elsewhere), transformers' causal-LM loss =
  {loss:.6f}.
- `tokenizer_structure.json`: transformers' backend tokenizer (`tokenizer.backend_tokenizer.to_str()`) without
  its vocab / merges / added tokens: normalizer, pre_tokenizer, model options, post_processor, decoder; plus
  the merges' count ({structure['model_merges_count']}), first 40 and sha256 (of `"left right"` lines joined by
  `\\n`), the vocab entries respelled as `▁▁…`, a summary of the added tokens, and the GGUF tokenizer metadata.
"""
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(body)


if __name__ == "__main__":
    sys.exit(main())
