"""Load generator for a live `ft serve` (run by scripts/bench/serve.sh).

Closed loop: at concurrency C, C workers each send a streamed, greedy chat completion and send the
next one as soon as the previous finishes, until N requests are done. Per request it records the
latency (send → `[DONE]`), the time to first token (send → first non-empty content delta) and the
completion tokens of the usage chunk; per level, the aggregate output tokens/s is all completion
tokens over the wall time of the level. Two scenarios per concurrency: every request to one
adapter, and requests spread round-robin over several adapters (same weights under different
names: what differs is only that the engine must apply several adapters within one batch).

Then single-stream decode speed: one streamed greedy request on an idle server, tokens/s from the
first token to the last.

With --only-model NAME there is one scenario, every request to NAME, and no adapters are needed:
that is how scripts/bench/serve-vs-llama-server.sh drives `ft serve` (--expect-fingerprint base)
and `llama-server` (--no-fingerprint-check: its fingerprint names its build, not the model).
Each row also ends up on a `RESULT scenario=S c=C ...` line for the calling script.

Plain httpx rather than the OpenAI SDK: on a small machine the client shares the cores with the
server, and the SDK's per-chunk model validation would be measured as server time.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time

import httpx

parser = argparse.ArgumentParser()
parser.add_argument("--base-url", required=True, help="http://HOST:PORT")
parser.add_argument("--api-key", default=None)
parser.add_argument("--base-model", required=True)
parser.add_argument("--adapters", default="", help="comma-separated adapter names; the first is the single-adapter scenario's")
parser.add_argument("--only-model", default=None, help="one scenario, 'base': every request to this model (no adapters needed)")
parser.add_argument("--expect-fingerprint", default=None, help="system_fingerprint every answer must start with [default: MODEL@; ft serve's base answers 'base']")
parser.add_argument("--no-fingerprint-check", action="store_true", help="do not check system_fingerprint (llama-server's names its build)")
parser.add_argument("--label", default="ft serve", help="the server's name in the table")
parser.add_argument("--texts-out", default=None, help="write {prompt index: first answer text} as JSON here")
parser.add_argument("--prompts", default="datasets/support/test.jsonl")
parser.add_argument("--concurrency", default="1,8,32")
parser.add_argument("--requests-factor", type=int, default=2, help="N = max(min_requests, factor × concurrency)")
parser.add_argument("--min-requests", type=int, default=4)
parser.add_argument("--max-tokens", type=int, default=32)
parser.add_argument("--decode-tokens", type=int, default=64)
parser.add_argument("--decode-reps", type=int, default=3, help="0: skip the single-stream decode part")
parser.add_argument("--decode-prompt", default="Write a short story about a robot who learns to paint.")
args = parser.parse_args()

adapters = [a for a in args.adapters.split(",") if a]
if not adapters and not args.only_model:
    parser.error("--adapters or --only-model is required")
if args.only_model:
    scenarios = [("base", [args.only_model])]
else:
    scenarios = [("single", adapters[:1]), (f"mixed{len(adapters)}", adapters)]
levels = [int(c) for c in args.concurrency.split(",")]
prompts = []
with open(args.prompts) as f:
    for line in f:
        if line.strip():
            messages = json.loads(line)["messages"]
            prompts.extend(m["content"] for m in messages if m["role"] == "user")
headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


class RequestFailed(Exception):
    pass


async def stream_chat(client, model, content, max_tokens):
    """One streamed chat completion; returns its timings, text, usage and fingerprint."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    parts, usage, finish, fingerprint = [], None, None, None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RequestFailed(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RequestFailed(f"error in stream: {chunk['error']}")
            fingerprint = chunk.get("system_fingerprint", fingerprint)
            for choice in chunk.get("choices", []):
                text = (choice.get("delta") or {}).get("content")
                if text:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    parts.append(text)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
            if chunk.get("usage"):
                usage = chunk["usage"]
        if not done:
            raise RequestFailed("stream ended without [DONE]")
    end = time.perf_counter()
    if usage is None:
        raise RequestFailed("no usage chunk")
    if finish is None:
        raise RequestFailed("no finish_reason")
    if first is None:
        raise RequestFailed("no content")
    return {
        "latency": end - start,
        "ttft": first - start,
        "first": first,
        "last": last,
        "tokens": usage["completion_tokens"],
        "text": "".join(parts),
        "finish": finish,
        "fingerprint": fingerprint,
    }


def percentile(values, p):
    """Nearest-rank percentile (with N ≤ 64 samples p99 is the maximum: said in the table)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


async def run_level(client, models, concurrency, n):
    """N requests, closed loop at `concurrency`; request i uses prompt i and models[i % len]."""
    queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    results, errors = {}, []

    async def worker():
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            model = models[i % len(models)]
            try:
                r = await stream_chat(client, model, prompts[i % len(prompts)], args.max_tokens)
                expected = args.expect_fingerprint or f"{model}@"
                if not args.no_fingerprint_check and not (r["fingerprint"] or "").startswith(expected):
                    raise RequestFailed(f"asked for {model}, fingerprint {r['fingerprint']!r}")
                results[i] = r
            except Exception as e:  # noqa: BLE001 - counted and shown, the bench goes on
                errors.append(f"request {i} ({model}): {type(e).__name__}: {e}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return results, errors, wall


async def main():
    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels) + 4)
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, limits=limits, timeout=600) as client:
        # Warm-up: one request per adapter, so first-use costs (allocations, lazy loads) are not
        # charged to the first level.
        for model in [args.only_model] if args.only_model else adapters:
            await stream_chat(client, model, prompts[0], 4)

        rows, reference, all_errors = [], {}, []
        for concurrency in levels:
            n = max(args.min_requests, args.requests_factor * concurrency)
            for scenario, models in scenarios:
                results, errors, wall = await run_level(client, models, concurrency, n)
                all_errors.extend(f"c={concurrency} {scenario}: {e}" for e in errors)
                ok = list(results.values())
                tokens = sum(r["tokens"] for r in ok)
                # Greedy and the same weights under every name: the text of request i should not
                # depend on the batch it ran in. Compared against the first level's single run.
                same = 0
                for i, r in results.items():
                    key = i % len(prompts)
                    reference.setdefault(key, r["text"])
                    same += reference[key] == r["text"]
                rows.append({
                    "scenario": scenario,
                    "c": concurrency,
                    "n": n,
                    "ok": len(ok),
                    "wall": wall,
                    "tps": tokens / wall if wall > 0 else 0.0,
                    "tokens": tokens,
                    "lat50": percentile([r["latency"] for r in ok], 50) if ok else float("nan"),
                    "lat99": percentile([r["latency"] for r in ok], 99) if ok else float("nan"),
                    "ttft50": percentile([r["ttft"] for r in ok], 50) if ok else float("nan"),
                    "ttft99": percentile([r["ttft"] for r in ok], 99) if ok else float("nan"),
                    "same": same,
                })
                row = rows[-1]
                print(f"  done: c={concurrency:<3} {scenario:<7} {row['ok']}/{n} ok in {wall:.1f} s", file=sys.stderr, flush=True)

        print()
        print(f"{args.label} load: streamed greedy chat completions, max_tokens {args.max_tokens}, prompts from {args.prompts}")
        print(f"  N = max({args.min_requests}, {args.requests_factor}×c) requests per row; p99 is nearest-rank (= max at these N);")
        print("  same = texts identical to the first run of the same prompt (greedy, identical weights)")
        header = f"{'scenario':<8} {'c':>3} {'ok/N':>6} {'wall s':>7} {'tokens':>6} {'out tok/s':>9} {'lat p50':>8} {'lat p99':>8} {'ttft p50':>8} {'ttft p99':>8} {'same':>6}"
        print(header)
        print("-" * len(header))
        for r in rows:
            print(
                f"{r['scenario']:<8} {r['c']:>3} {r['ok']:>2}/{r['n']:<3} {r['wall']:>7.2f} {r['tokens']:>6} {r['tps']:>9.1f} "
                f"{r['lat50']:>8.3f} {r['lat99']:>8.3f} {r['ttft50']:>8.3f} {r['ttft99']:>8.3f} {r['same']:>2}/{r['ok']:<3}"
            )
        for r in rows:
            print(
                f"RESULT scenario={r['scenario']} c={r['c']} ok={r['ok']} n={r['n']} tokens={r['tokens']} "
                f"wall={r['wall']:.3f} tps={r['tps']:.3f} lat_p50={r['lat50']:.4f} lat_p99={r['lat99']:.4f} "
                f"ttft_p50={r['ttft50']:.4f} ttft_p99={r['ttft99']:.4f}"
            )
        if args.texts_out:
            with open(args.texts_out, "w") as f:
                json.dump({str(k): v for k, v in sorted(reference.items())}, f, indent=1)
        print()
        by = {(r["scenario"], r["c"]): r for r in rows}
        for c in levels if not args.only_model else []:
            single, mixed = by[("single", c)], by[(f"mixed{len(adapters)}", c)]
            ratio = mixed["tps"] / single["tps"] if single["tps"] else float("nan")
            print(f"c={c:<3} throughput mixed{len(adapters)}/single: {mixed['tps']:.1f} / {single['tps']:.1f} tok/s = {ratio:.2f}x")
        if all_errors:
            print(f"\n{len(all_errors)} failed requests:")
            for e in all_errors[:20]:
                print(f"  {e}")

        # Single-stream decode on an idle server: tokens/s from the first token to the last, so
        # prompt processing and the first token are excluded (as llama.cpp's eval time does).
        # Median of a few runs after one warm-up; the base model, as the anchors run.
        print()
        for model in (args.base_model, *adapters[:1]) if args.decode_reps > 0 else ():
            await stream_chat(client, model, args.decode_prompt, 8)
            runs = []
            for _ in range(args.decode_reps):
                r = await stream_chat(client, model, args.decode_prompt, args.decode_tokens)
                if r["last"] > r["first"] and r["tokens"] > 1:
                    runs.append(((r["tokens"] - 1) / (r["last"] - r["first"]), r))
            if not runs:
                print(f"single-stream decode ({model}): no usable run")
                continue
            tps, r = sorted(runs, key=lambda x: x[0])[len(runs) // 2]
            print(
                f"ft serve single-stream decode ({model}): {r['tokens']} tokens (finish {r['finish']}), "
                f"ttft {r['ttft'] * 1000:.0f} ms, {tps:.1f} tokens/s first→last (median of {len(runs)})"
            )
            if model == args.base_model:
                print(f"RESULT ft_decode_tps={tps:.3f}")
        return 1 if all_errors else 0


sys.exit(asyncio.run(main()))
