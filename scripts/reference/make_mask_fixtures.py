#!/usr/bin/env python3
"""Reference assistant-token masks for chat templates (transformers' `{% generation %}` masks).

For five template families (smollm2 = the GGUF's own ChatML template, llama3, mistral, gemma, qwen2) this renders
four fixed conversations with the official template on the SmolLM2-135M-Instruct tokenizer (read from the GGUF,
pre-tokenizer patched exactly as in make_smollm2_fixtures.py) and records the text, the token ids and
transformers' `assistant_masks` obtained from a second, `{% generation %}`-tagged copy of each template whose
rendering is asserted to be byte-identical to the official one.

Writes crates/ft-data/tests/fixtures/masks/ (see the README.md written there).

Run from the repository root:
    $HOME/.cache/ft-reference-venv/bin/python scripts/reference/make_mask_fixtures.py

Deterministic (no model weights, no randomness, no network): two runs give byte-identical files.
"""

import hashlib
import json
import os
import shutil
from importlib.metadata import version

import jinja2
import tokenizers
import transformers
from gguf import GGUFReader
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL_DIR = os.path.join(ROOT, "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(ROOT, "crates", "ft-data", "tests", "fixtures", "masks")
SCRIPT = "scripts/reference/make_mask_fixtures.py"
COMMAND = "$HOME/.cache/ft-reference-venv/bin/python " + SCRIPT

# Official templates, copied verbatim from llama.cpp's models/templates/ (the repository is ggml-org/llama.cpp,
# formerly ggerganov/llama.cpp). All four files were added by this commit and are unchanged up to at least
# c392e5094deaf2d1a7c18683214f007fad3fe42b (2025-02-20). The git blob ids below are checked at run time, so the
# texts are byte-identical to upstream.
LLAMA_CPP_REPO = "ggml-org/llama.cpp"
LLAMA_CPP_COMMIT = "8b576b6c55bc4e6be898b47522f0ef402b93ef62"

OFFICIAL_LLAMA3 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

OFFICIAL_MISTRAL = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS][" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST]" + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST]" + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif (message.tool_calls is defined and message.tool_calls is not none) %}
        {{- "[TOOL_CALLS][" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- message["content"] + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS]{"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

OFFICIAL_GEMMA = r"""{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '
' + message['content'] | trim + '<end_of_turn>
' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model
'}}{% endif %}"""

OFFICIAL_QWEN2 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


def smollm_pre_tokenizer():
    # Same as make_smollm2_fixtures.py: the real SmolLM2 tokenizer.json splits digits individually.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def git_blob_sha1(text):
    data = text.encode("utf-8")
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def retag(template, old, new):
    assert template.count(old) == 1, (old, template.count(old))
    return template.replace(old, new)


# An assistant message is trained on unless it carries "weight": 0 (OpenAI fine-tuning format).
TRAINED = "(message.weight is not defined or message.weight != 0)"


def tag_smollm2(t):
    # The GGUF template has real newline characters inside its string literals.
    old = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    new = (
        "{% if message['role'] == 'assistant' and " + TRAINED + " %}"
        "{{'<|im_start|>' + message['role'] + '\n'}}"
        "{% generation %}{{message['content'] + '<|im_end|>'}}{% endgeneration %}"
        "{{'\n'}}"
        "{% else %}" + old + "{% endif %}"
    )
    return retag(t, old, new)


def tag_llama3(t):
    old = (
        "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        "+ message['content'] | trim + '<|eot_id|>' }}\n"
    )
    new = (
        "        {%- if message.role == 'assistant' and " + TRAINED + " %}\n"
        "            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}\n"
        "            {%- generation %}\n"
        "            {{- message['content'] | trim + '<|eot_id|>' }}\n"
        "            {%- endgeneration %}\n"
        "        {%- else %}\n"
        "    " + old + "        {%- endif %}\n"
    )
    return retag(t, old, new)


def tag_mistral(t):
    old = '        {{- message["content"] + eos_token}}\n'
    new = (
        "        {%- if " + TRAINED + " %}\n"
        "            {%- generation %}\n"
        "            {{- message[\"content\"] + eos_token }}\n"
        "            {%- endgeneration %}\n"
        "        {%- else %}\n"
        "    " + old + "        {%- endif %}\n"
    )
    return retag(t, old, new)


def tag_gemma(t):
    old = "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    new = (
        "{% if message['role'] == 'assistant' and " + TRAINED + " %}"
        "{{ '<start_of_turn>' + role + '\n' }}"
        "{% generation %}{{ message['content'] | trim + '<end_of_turn>' }}{% endgeneration %}"
        "{{ '\n' }}"
        "{% else %}" + old + "{% endif %}"
    )
    return retag(t, old, new)


def tag_qwen2(t):
    old = "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    new = (
        "        {%- if message.role == 'assistant' and " + TRAINED + " %}\n"
        "            {{- '<|im_start|>' + message.role + '\\n' }}\n"
        "            {%- generation %}\n"
        "            {{- message.content + '<|im_end|>' }}\n"
        "            {%- endgeneration %}\n"
        "            {{- '\\n' }}\n"
        "        {%- else %}\n"
        "    " + old + "        {%- endif %}\n"
    )
    return retag(t, old, new)


# family, official template (None: the GGUF's), llama.cpp path + blob, bos, eos, extra template context,
# tagger, what a trained assistant turn must render as (independent check of the tagged spans).
FAMILIES = [
    dict(
        family="smollm2", official=None, path=None, blob=None, bos=None, eos=None, extra={},
        tag=tag_smollm2, trained=lambda c: c + "<|im_end|>",
    ),
    dict(
        family="llama3", official=OFFICIAL_LLAMA3, path="models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja",
        blob="33089ace1be88f22a10fe861ad49718d5d886090", bos="<|begin_of_text|>", eos=None,
        # The template defaults date_string to this same value when it is undefined; passed explicitly anyway.
        extra={"date_string": "26 Jul 2024"},
        tag=tag_llama3, trained=lambda c: c.strip() + "<|eot_id|>",
    ),
    dict(
        family="mistral", official=OFFICIAL_MISTRAL,
        path="models/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja",
        blob="9c21a3f13ebf55994c64c93c9ae5361580570651", bos="<s>", eos="</s>", extra={},
        tag=tag_mistral, trained=lambda c: c + "</s>",
    ),
    dict(
        family="gemma", official=OFFICIAL_GEMMA, path="models/templates/google-gemma-2-2b-it.jinja",
        blob="923ec253c8dbefbb41cf084db7251df41d000f6d", bos="<bos>", eos=None, extra={},
        tag=tag_gemma, trained=lambda c: c.strip() + "<end_of_turn>",
    ),
    dict(
        family="qwen2", official=OFFICIAL_QWEN2, path="models/templates/Qwen-Qwen2.5-7B-Instruct.jinja",
        blob="bdf7919a96cfe43d50914a007b9c0877bd0ec27e", bos=None, eos=None, extra={},
        tag=tag_qwen2, trained=lambda c: c + "<|im_end|>",
    ),
]

CONVERSATIONS = [
    (
        "system_user_assistant",
        [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ],
    ),
    (
        "two_assistant_turns",
        [
            {"role": "user", "content": "Hi there!"},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
            {"role": "user", "content": "Tell me a joke about computers."},
            {"role": "assistant", "content": "Why did the computer go to the doctor? Because it had a virus!"},
        ],
    ),
    (
        "system_unicode_digits_newline",
        [
            {"role": "system", "content": "You are the barista bot of Café ☕."},
            {"role": "user", "content": "Hi! One flat white, please. My order number is 12345."},
            {"role": "assistant", "content": "Sure! Order 12345: one flat white at Café ☕.\nIt will be ready in 3 minutes."},
            {"role": "user", "content": "Thanks. How much is it?"},
            {"role": "assistant", "content": "That is 4.50 €, please."},
        ],
    ),
    (
        "weight0_first_assistant",
        [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "2 + 2 = 5.", "weight": 0},
            {"role": "user", "content": "That is wrong. Try again."},
            {"role": "assistant", "content": "Sorry, 2 + 2 = 4."},
        ],
    ),
]


def role_content(messages):
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def nbytes(s):
    return len(s.encode("utf-8"))


def to_json(obj, indent=0):
    """json with indent=1, but lists of ints on one line (keeps the fixtures small and diffable)."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [pad + json.dumps(k, ensure_ascii=False) + ": " + to_json(v, indent + 1) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list):
        if not obj:
            return "[]"
        if all(isinstance(x, int) and not isinstance(x, bool) for x in obj):
            return "[" + ", ".join(str(x) for x in obj) + "]"
        if all(isinstance(x, int) and not isinstance(x, bool) for y in obj if isinstance(y, list) for x in y) and all(
            isinstance(y, list) for y in obj
        ):
            return "[" + ", ".join(to_json(y) for y in obj) + "]"
        return "[\n" + ",\n".join(pad + to_json(v, indent + 1) for v in obj) + "\n" + " " * indent + "]"
    return json.dumps(obj, ensure_ascii=False)


def write(name, text):
    with open(os.path.join(OUT, name), "w", encoding="utf-8", newline="") as f:
        f.write(text)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)

    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME)
    gguf_pre = str(tok.backend_tokenizer.pre_tokenizer)
    if "Digits" not in gguf_pre:
        tok.backend_tokenizer.pre_tokenizer = smollm_pre_tokenizer()
    reader = GGUFReader(os.path.join(MODEL_DIR, GGUF_NAME))
    gguf_template = reader.fields["tokenizer.chat_template"].contents()
    assert tok.chat_template == gguf_template

    summary = []
    for fam in FAMILIES:
        name = fam["family"]
        official = fam["official"] if fam["official"] is not None else gguf_template
        if fam["blob"] is not None:
            assert git_blob_sha1(official) == fam["blob"], name
        tagged = fam["tag"](official)
        write(name + ".jinja", official)

        kw = dict(fam["extra"])
        for key in ("bos_token", "eos_token"):
            value = fam[key.split("_")[0]]
            if value is None:
                assert key not in official, (name, key)  # unused by this template
            else:
                kw[key] = value
        tok.chat_template = official

        def render(messages, add_generation_prompt=False, template=None):
            return tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template, **kw
            )

        skipped = []
        conversations = []
        for conv_name, messages in CONVERSATIONS:
            plain = role_content(messages)
            try:
                text = render(plain)
            except jinja2.TemplateError as e:
                skipped.append({"name": conv_name, "reason": str(e)})
                continue
            if "date_string" in kw:  # the explicit date equals the template's own default
                kw_no_date = {k: v for k, v in kw.items() if k != "date_string"}
                assert tok.apply_chat_template(plain, tokenize=False, **kw_no_date) == text

            # Tagged template: byte-identical rendering, with and without generation prompts.
            assert render(messages, template=tagged) == text, name
            out = tok.apply_chat_template(
                messages,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                chat_template=tagged,
                **kw,
            )
            ids = list(out["input_ids"])
            mask = list(out["assistant_masks"])
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            assert list(enc["input_ids"]) == ids, (name, conv_name)
            assert tok.apply_chat_template(plain, tokenize=True, return_dict=True, **kw)["input_ids"] == ids
            offsets = [tuple(o) for o in enc["offset_mapping"]]

            # Generation spans (character offsets) straight from transformers' renderer.
            rendered, gen_idx = render_jinja_template(
                conversations=[messages],
                chat_template=tagged,
                return_assistant_tokens_mask=True,
                add_generation_prompt=False,
                **{**tok.special_tokens_map, **kw},
            )
            assert rendered[0] == text
            spans = [tuple(s) for s in gen_idx[0]]
            expected = [fam["trained"](m["content"]) for m in messages
                        if m["role"] == "assistant" and m.get("weight", 1) != 0]
            assert [text[s:e] for s, e in spans] == expected, (name, conv_name, [text[s:e] for s, e in spans])

            # Independent recomputation of the mask from the spans: a token is labeled iff it overlaps a span.
            recomputed = [int(any(ts < e and te > s for s, e in spans)) for ts, te in offsets]
            assert recomputed == mask, (name, conv_name)
            boundary = [
                {"index": i, "id": ids[i], "text": text[ts:te]}
                for i, (ts, te) in enumerate(offsets)
                if mask[i] and not any(s <= ts and te <= e for s, e in spans)
            ]

            runs, cur = [], []
            for i, m in zip(ids, mask):
                if m:
                    cur.append(i)
                elif cur:
                    runs.append(cur)
                    cur = []
            if cur:
                runs.append(cur)
            labeled_text = "".join(tok.decode(r, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                                   for r in runs)

            # Prefix property used by the Rust side: render(messages[:i], add_generation_prompt=True) must be a
            # prefix of the full rendering for every assistant index i.
            prefix_checks = []
            for i, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                prompt = render(plain[:i], add_generation_prompt=True)
                assert render(messages[:i], add_generation_prompt=True, template=tagged) == prompt
                check = {"assistant_index": i, "is_prefix": text.startswith(prompt)}
                if not check["is_prefix"]:
                    d = next((k for k, (a, b) in enumerate(zip(prompt, text)) if a != b), min(len(prompt), len(text)))
                    check["first_difference_byte"] = nbytes(prompt[:d])
                    check["prompt_from_difference"] = prompt[d:d + 80]
                    check["text_from_difference"] = text[d:d + 80]
                prefix_checks.append(check)

            conversations.append(
                {
                    "name": conv_name,
                    "messages": messages,
                    "text": text,
                    "input_ids": ids,
                    "assistant_mask": mask,
                    "labeled_text": labeled_text,
                    "assistant_spans_bytes": [[nbytes(text[:s]), nbytes(text[:e])] for s, e in spans],
                    "boundary_tokens": boundary,
                    "prefix_checks": prefix_checks,
                }
            )
            summary.append((name, conv_name, len(ids), sum(mask), len(boundary),
                            all(c["is_prefix"] for c in prefix_checks)))

        if fam["path"] is None:
            source = {"gguf": "models/" + GGUF_NAME, "metadata_key": "tokenizer.chat_template"}
        else:
            source = {"repo": LLAMA_CPP_REPO, "path": fam["path"], "commit": LLAMA_CPP_COMMIT, "git_blob": fam["blob"]}
        doc = {
            "family": name,
            "template_file": name + ".jinja",
            "template_source": source,
            "bos_token": fam["bos"],
            "eos_token": fam["eos"],
            "extra_context": fam["extra"],
            "skipped": skipped,
            "conversations": conversations,
            "tagged_template": tagged,
        }
        write(name + ".json", to_json(doc) + "\n")

    write("README.md", readme(summary))
    for row in summary:
        print(*row)


def readme(summary):
    rows = "\n".join(
        f"| {f} | {c} | {n} | {m} | {b} | {'yes' if p else '**no**'} |" for f, c, n, m, b, p in summary
    )
    return f"""# Assistant-token mask fixtures

Written by `{SCRIPT}` (do not edit by hand):

    {COMMAND}

Versions: transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, jinja2 {jinja2.__version__},
gguf {version("gguf")}. Tokenizer: `AutoTokenizer.from_pretrained("models", gguf_file="{GGUF_NAME}")` with its
pre-tokenizer replaced by `Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False,
trim_offsets=True, use_regex=True)]` (as in `make_smollm2_fixtures.py`). Only SmolLM2's vocabulary is available, so
the other families' control strings (`<|eot_id|>`, `[INST]`, `<start_of_turn>`, `<s>`, ...) are tokenized as
ordinary text pieces; `<|im_start|>`/`<|im_end|>` (smollm2, qwen2) are real special tokens (ids 1, 2).

## Files

Per family (`smollm2`, `llama3`, `mistral`, `gemma`, `qwen2`):

- `<family>.jinja`: the official template, byte for byte. `smollm2`: the GGUF's `tokenizer.chat_template`.
  The others come from `{LLAMA_CPP_REPO}` `models/templates/` at commit `{LLAMA_CPP_COMMIT}`:
  `meta-llama-Llama-3.1-8B-Instruct.jinja` (llama3), `mistralai-Mistral-Nemo-Instruct-2407.jinja` (mistral),
  `google-gemma-2-2b-it.jinja` (gemma), `Qwen-Qwen2.5-7B-Instruct.jinja` (qwen2); the script checks their git blob ids.
- `<family>.json`:
  - `family`, `template_file`, `template_source`
  - `bos_token`, `eos_token`: the strings passed to the template (null: not passed, the template does not use it).
    llama3: bos `<|begin_of_text|>`; mistral: bos `<s>`, eos `</s>`; gemma: bos `<bos>`; smollm2, qwen2: none.
  - `extra_context`: other template variables passed (llama3: `date_string` = `26 Jul 2024`, which is also the
    template's own default when `date_string` is undefined). No `tools`, no other variables.
  - `skipped`: conversations the official template refuses (`name`, `reason` = the template's exception message).
  - `conversations[]`:
    - `name`, `messages` (as given, including `"weight": 0` where present; the templates are rendered with
      role/content only)
    - `text`: full rendering, `add_generation_prompt=False`
    - `input_ids`: `tok(text, add_special_tokens=False).input_ids` (asserted equal to `apply_chat_template`'s ids)
    - `assistant_mask`: transformers' `assistant_masks` (0/1 per token) from
      `apply_chat_template(..., return_dict=True, return_assistant_tokens_mask=True, chat_template=tagged_template)`
    - `labeled_text`: the decoded labeled tokens, each contiguous run decoded on its own, concatenated (review aid)
    - `assistant_spans_bytes`: the `{{% generation %}}` spans as UTF-8 byte ranges `[start, end)` of `text`
    - `boundary_tokens`: labeled tokens that are not entirely inside a span (`index`, `id`, `text` = the token's
      text); transformers labels every token that overlaps a span, so a token straddling a span edge is labeled
    - `prefix_checks`: for every assistant message index `i`, whether the rendering of `messages[:i]` with
      `add_generation_prompt=True` is a string prefix of `text` (with the first differing byte when not)
  - `tagged_template`: the `{{% generation %}}`-tagged copy of the template used for the masks

## The masking rule (what the tagged templates put inside `{{% generation %}}`)

For each assistant message that does not carry `"weight": 0`: its content as the template emits it plus the
end-of-turn marker the template emits right after it (`<|im_end|>` for smollm2/qwen2, `<|eot_id|>` for llama3, the
eos `</s>` for mistral, `<end_of_turn>` for gemma). Not inside: the role header / `[/INST]` / generation prompt
before it, whitespace before the content, and the whitespace/newline after the end-of-turn marker. llama3 and gemma
`trim` the content; smollm2, qwen2 and mistral emit it as is. A `"weight": 0` assistant message is rendered
normally but never labeled. The script asserts, for every conversation, that the tagged template renders
byte-identically to the official one (also for every `add_generation_prompt=True` prefix), that each span's text is
exactly content + marker, and that the mask equals "token overlaps a span" recomputed from the token offsets.

transformers renders with jinja2 `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`, passes
`messages`, `tools=None`, `documents=None`, `add_generation_prompt`, the tokenizer's special tokens (overridden by
the bos/eos above) and `extra_context`.

## Notes on these templates (what the fixtures show)

- smollm2 / qwen2 (ChatML): without a system message both insert a default one (SmolLM's / Qwen's). The trained
  span is `content<|im_end|>`; the `\\n` after `<|im_end|>` is not trained.
- llama3 (Llama 3.1): always emits a system header with `Cutting Knowledge Date: December 2023` and
  `Today Date: 26 Jul 2024` (empty system text when there is no system message); the bos string is part of `text`.
  With SmolLM2's vocabulary `<|eot_id|><|start_header_id|>` tokenizes with a token `><` (id 21198) across the end
  of a non-final trained turn; transformers labels it (see `boundary_tokens`).
- mistral (Mistral Nemo 2407): no space around `[INST]`/`[/INST]`, no generation prompt (a rendering ending with a
  user turn already ends with `[/INST]`). The system message is inserted only into the *last* message if that is a
  user message, so a conversation that ends with an assistant turn loses its system message entirely, and the
  prompt rendered for `messages[:i]` (ending with a user turn, which then carries the system message) is **not** a
  prefix of the full rendering when there is a system message (`prefix_checks`).
- gemma (Gemma 2): raises `System role not supported` for a system message (those conversations are `skipped`);
  the assistant role is rendered as `model`; content is trimmed; the `\\n` after `<end_of_turn>` is not trained.

## Summary

| family | conversation | tokens | labeled | boundary tokens | prefix property |
|---|---|---|---|---|---|
{rows}
"""


if __name__ == "__main__":
    main()
