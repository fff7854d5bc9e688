#!/usr/bin/env python3
"""Independent reference for `ft data prepare`: clean, mask PII, filter by length, dedup, split sizes.

Reads crates/ft-data/tests/fixtures/prepare/raw.jsonl and writes expected.json next to it. The README
in that folder lists the rules and how the edge cases are settled. Only the standard library is used.
Output is deterministic.

Run from the repository root:
    python3 scripts/reference/prepare_reference.py             # rewrite expected.json
    python3 scripts/reference/prepare_reference.py --check     # exit 1 if expected.json is stale
    python3 scripts/reference/prepare_reference.py --explain   # also print each line's outcome
"""

import argparse
import json
import os
import re
import sys
import unicodedata

FIXTURE_DIR = os.path.join("crates", "ft-data", "tests", "fixtures", "prepare")

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PHONE_RE = re.compile(
    r"(?<![\w])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}(?![\w])"
)
MIN_CHARS = 10
MAX_CHARS = 4000


# ------------------------------------------------------------------------------------ parsing
def parse_example(obj):
    """Returns (format, example) with example in its original format, or None when invalid.

    The first matching shape wins, in this order: "messages" -> chat; "prompt" and "completion"
    -> prompt_completion; "text" -> text. Other keys are ignored and not carried to the output.
    """
    if not isinstance(obj, dict):
        return None
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            return None
        out = []
        for m in msgs:
            if not isinstance(m, dict):
                return None
            role, content = m.get("role"), m.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                return None
            out.append({"role": role, "content": content})
        return "chat", {"messages": out}
    if "prompt" in obj and "completion" in obj:
        p, c = obj["prompt"], obj["completion"]
        if not isinstance(p, str) or not isinstance(c, str):
            return None
        return "prompt-completion", {"prompt": p, "completion": c}
    if "text" in obj:
        t = obj["text"]
        if not isinstance(t, str):
            return None
        return "text", {"text": t}
    return None


def map_fields(fmt, ex, fn):
    """Applies fn to every text field (message contents, prompt, completion, text; not roles)."""
    if fmt == "chat":
        return {"messages": [{"role": m["role"], "content": fn(m["content"])} for m in ex["messages"]]}
    return {k: fn(v) for k, v in ex.items()}


def fields(fmt, ex):
    if fmt == "chat":
        return [m["content"] for m in ex["messages"]]
    if fmt == "prompt-completion":
        return [ex["prompt"], ex["completion"]]
    return [ex["text"]]


# ------------------------------------------------------------------------------------ rules
def clean(s):
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = unicodedata.normalize("NFC", s)
    s = "".join(ch for ch in s if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    s = s.replace("\t", " ")
    s = re.sub(r" {2,}", " ", s)
    s = "\n".join(line.rstrip(" ") for line in s.split("\n"))  # split on "\n" only (not splitlines)
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip()  # Unicode whitespace, like Rust's str::trim


class PiiCounter:
    def __init__(self):
        self.email = 0
        self.phone = 0

    def mask(self, s):
        s, n = EMAIL_RE.subn("[EMAIL]", s)
        self.email += n
        s, n = PHONE_RE.subn("[PHONE]", s)
        self.phone += n
        return s


def dedup_key(fmt, ex):
    if fmt == "chat":
        parts = [m["role"] + "\u0000" + m["content"] for m in ex["messages"]]
    else:
        parts = fields(fmt, ex)
    key = "\u0000".join([fmt] + parts).lower()
    return re.sub(r"\s+", " ", key)


def prepare(raw_text):
    lines = raw_text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the file does not start another line
    stats = {"lines": 0, "invalid": 0, "invalid_lines": [], "pii_email": 0, "pii_phone": 0,
             "too_short": 0, "too_long": 0, "duplicate": 0, "kept": 0}
    pii = PiiCounter()
    seen = set()
    kept = []
    outcome = []  # (line number, outcome) for --explain
    for lineno, line in enumerate(lines, start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if line.strip() == "":
            continue
        stats["lines"] += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        parsed = parse_example(obj)
        if parsed is None:
            stats["invalid"] += 1
            stats["invalid_lines"].append(lineno)
            outcome.append((lineno, "invalid"))
            continue
        fmt, ex = parsed
        ex = map_fields(fmt, ex, clean)
        ex = map_fields(fmt, ex, pii.mask)
        n_chars = sum(len(f) for f in fields(fmt, ex))
        if n_chars < MIN_CHARS:
            stats["too_short"] += 1
            outcome.append((lineno, f"too_short ({n_chars})"))
            continue
        if n_chars > MAX_CHARS:
            stats["too_long"] += 1
            outcome.append((lineno, f"too_long ({n_chars})"))
            continue
        key = dedup_key(fmt, ex)
        if key in seen:
            stats["duplicate"] += 1
            outcome.append((lineno, "duplicate"))
            continue
        seen.add(key)
        kept.append(ex)
        outcome.append((lineno, f"kept ({fmt}, {n_chars})"))
    stats["pii_email"] = pii.email
    stats["pii_phone"] = pii.phone
    n = len(kept)
    stats["kept"] = n
    stats["train"] = n * 8 // 10
    stats["validation"] = n // 10
    stats["test"] = n - stats["train"] - stats["validation"]
    stats["kept_examples"] = kept
    return stats, outcome


# ------------------------------------------------------------------------------------ self-test
def self_test():
    """The two regexes on the formats they must catch and the decoys they must leave alone."""
    phones = ["+1 415 555 0100", "(020) 7946 0958", "555-123-4567", "030.1234.5678", "+44 20 7946 0958",
              "(415) 555-0123", "+49 30 1234 5678", "415.555.0199", "+1-202-555-0147", "06 1234 5678",
              "+91 (22) 2345 6789", "212 555 0188", "0151 2345678", "+1 (555) 010-9999", "+55 11 9876 5432"]
    for p in phones:
        assert PHONE_RE.fullmatch(p), p
        assert PHONE_RE.sub("[PHONE]", f"call {p}.") == "call [PHONE].", p
    not_phones = ["v1.2.3", "10.0.0.1", "10.0.0.2", "2024-01-15", "42", "2019-2023", "8080", "94105",
                  "3.14159", "$1,299.99", "10:30", "order 123456789", "v2.0.1", "12 months", "5 GB"]
    for d in not_phones:
        assert not PHONE_RE.search(d), d
    emails = ["jane.doe@example.com", "JOHN_SMITH+billing@Example.CO.UK", "a.b-c%d@sub.domain.org",
              "x@ab.io", "555-123-4567@example.com", "user123@mail.example.travel"]
    for e in emails:
        assert EMAIL_RE.fullmatch(e), e
    assert EMAIL_RE.sub("[EMAIL]", "It is first.last@university.edu.") == "It is [EMAIL]."
    assert EMAIL_RE.sub("[EMAIL]", "<ops@company.net>;") == "<[EMAIL]>;"
    for d in ["@acmecloud", "jane at example dot com", "root@localhost", "a@b.c", "10.0.0.1", "v1.2.3"]:
        assert not EMAIL_RE.search(d), d
    # Cleaning.
    assert clean("a\r\nb\rc") == "a\nb\nc"
    assert clean("Cafe\u0301") == "Caf\u00e9"
    assert clean("\ufb01le \u212b") == "\ufb01le \u00c5"  # NFC, not NFKC
    assert clean("a\u0007b\u000cc\u0085d\u0000e\u007ff") == "abcdef"
    assert clean("x\t\ty  z") == "x y z"
    assert clean("a  \n b \n\n\n\nc") == "a\n b\n\nc"
    assert clean("a\n \n\t\n\nb") == "a\n\nb"
    assert clean("  \u00a0 x\u00a0 y \u00a0") == "x\u00a0 y"
    # Dedup key: field separator keeps "a"+"bc" apart from "ab"+"c".
    assert dedup_key("prompt-completion", {"prompt": "a", "completion": "bc"}) != \
        dedup_key("prompt-completion", {"prompt": "ab", "completion": "c"})


def render(stats):
    order = ["lines", "invalid", "invalid_lines", "pii_email", "pii_phone", "too_short", "too_long",
             "duplicate", "kept", "train", "validation", "test", "kept_examples"]
    return json.dumps({k: stats[k] for k in order}, ensure_ascii=False, indent=2) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", default=os.path.join(FIXTURE_DIR, "raw.jsonl"))
    ap.add_argument("--out", default=os.path.join(FIXTURE_DIR, "expected.json"))
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    ap.add_argument("--explain", action="store_true", help="print the outcome of every line")
    args = ap.parse_args()
    self_test()
    with open(args.raw, "rb") as f:
        raw = f.read().decode("utf-8")
    stats, outcome = prepare(raw)
    if args.explain:
        for lineno, what in outcome:
            print(f"{lineno:4d} {what}")
    text = render(stats)
    summary = {k: v for k, v in stats.items() if k != "kept_examples"}
    print(json.dumps(summary), file=sys.stderr)
    if args.check:
        with open(args.out, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{args.out} is stale: rerun without --check", file=sys.stderr)
                sys.exit(1)
        return
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


if __name__ == "__main__":
    main()
