"""Checks a live `ft serve` with the official OpenAI Python SDK (run by scripts/openai-sdk-check.sh).

Each check prints one line, `ok   <what>: <evidence>` or `FAIL <what>: <why>`; every check runs
even after a failure (so one run shows everything that is wrong), and the exit status is 1 if any
failed.
"""

import argparse
import sys
import traceback

import openai
from openai import OpenAI

from checks import check, failures, ran

QUESTION = "What is the capital of France?"
# SmolLM2-135M-Instruct's greedy answer (transformers and ft agree on it).
EXPECTED = "The capital of France is Paris."

parser = argparse.ArgumentParser()
parser.add_argument("--base-url", required=True, help="http://HOST:PORT/v1")
parser.add_argument("--api-key", required=True)
parser.add_argument("--base-model", required=True, help="the base model's id (the GGUF file stem)")
parser.add_argument("--adapter", default="demo", help="name of an adapter the server was started with")
args = parser.parse_args()

# No retries: the SDK retries 5xx/429/connection errors by default, which would hide a flaky
# server from a compatibility check.
client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
seen = {}


def greedy_chat(model, **extra):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=24,
        **extra,
    )


@check("models.list() has the base and the adapter")
def _():
    models = {m.id: m for m in client.models.list()}
    assert args.base_model in models, f"no {args.base_model!r} in {sorted(models)}"
    assert args.adapter in models, f"no {args.adapter!r} in {sorted(models)}"
    parent = getattr(models[args.adapter], "parent", None)
    assert parent == args.base_model, f"{args.adapter!r} has parent {parent!r}, expected {args.base_model!r}"
    return f"{sorted(models)}; {args.adapter}.parent={parent}"


@check("chat.completions.create, greedy, base")
def _():
    r = greedy_chat(args.base_model)
    text = r.choices[0].message.content
    seen["base"] = text
    assert text == EXPECTED, f"got {text!r}, expected {EXPECTED!r}"
    assert r.choices[0].finish_reason == "stop", f"finish_reason {r.choices[0].finish_reason!r}"
    assert r.system_fingerprint == "base", f"system_fingerprint {r.system_fingerprint!r}"
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0, f"usage {r.usage}"
    return f"{text!r} finish_reason={r.choices[0].finish_reason} fingerprint={r.system_fingerprint} usage={r.usage.prompt_tokens}+{r.usage.completion_tokens}"


@check("chat.completions.create, streamed with include_usage, base")
def _():
    stream = greedy_chat(args.base_model, stream=True, stream_options={"include_usage": True})
    parts, finish, usage, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason is not None:
                finish = choice.finish_reason
        if chunk.usage is not None:
            assert not chunk.choices, "the usage chunk must have no choices"
            usage = chunk.usage
    text = "".join(parts)
    assert text == seen.get("base", EXPECTED), f"streamed {text!r}, non-streamed {seen.get('base')!r}"
    assert finish is not None, "no chunk carried a finish_reason"
    assert usage is not None, "no usage chunk"
    assert usage.completion_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, f"usage {usage}"
    return f"{chunks} chunks, {text!r} finish_reason={finish} usage={usage.prompt_tokens}+{usage.completion_tokens}"


@check("chat.completions.create, greedy, adapter by name")
def _():
    r = greedy_chat(args.adapter)
    text = r.choices[0].message.content
    assert text, "empty answer"
    assert r.model == args.adapter, f"model {r.model!r}"
    assert (r.system_fingerprint or "").startswith(f"{args.adapter}@"), f"system_fingerprint {r.system_fingerprint!r}"
    same = "same as" if text == seen.get("base") else "differs from"
    return f"{text!r} finish_reason={r.choices[0].finish_reason} fingerprint={r.system_fingerprint} ({same} the base's answer)"


@check("completions.create on a raw prompt")
def _():
    r = client.completions.create(model=args.base_model, prompt="The capital of France is", max_tokens=8, temperature=0)
    text = r.choices[0].text
    assert text, "empty completion"
    assert r.usage.completion_tokens > 0, f"usage {r.usage}"
    return f"'The capital of France is' -> {text!r} finish_reason={r.choices[0].finish_reason}"


@check("unknown model raises NotFoundError (404)")
def _():
    try:
        greedy_chat("no-such-model")
    except openai.NotFoundError as e:
        assert e.status_code == 404, f"status {e.status_code}"
        code = e.body.get("code") if isinstance(e.body, dict) else None
        assert code == "model_not_found", f"error body {e.body!r}"
        return f"status {e.status_code}, code={code}"
    raise AssertionError("no error raised")


@check("wrong API key raises AuthenticationError (401)")
def _():
    wrong = OpenAI(base_url=args.base_url, api_key=args.api_key + "-wrong", max_retries=0, timeout=30)
    try:
        wrong.chat.completions.create(model=args.base_model, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    except openai.AuthenticationError as e:
        assert e.status_code == 401, f"status {e.status_code}"
        return f"status {e.status_code}"
    raise AssertionError("no error raised")


verdict = f"{len(failures)} of {len(ran)} checks failed" if failures else f"all {len(ran)} checks passed"
print(f"openai {openai.__version__}: {verdict}")
sys.exit(1 if failures else 0)
