#!/usr/bin/env python3
"""Reference values for the text-generation metrics of `ft-eval`: SQuAD EM/F1, ROUGE-L, BLEU (sacrebleu).

For a fixed list of (prediction, reference) pairs this records, per case:
  - `em`, `f1`: the official SQuAD v1.1 `exact_match_score` / `f1_score` (copied verbatim below);
    `f1_v2`: the same token F1 with SQuAD v2.0's empty-answer guard (see NOTES);
  - `rougeL`: rouge_score's RougeScorer(['rougeL'], use_stemmer=False) precision/recall/fmeasure;
  - `sentence_bleu`: sacrebleu.sentence_bleu(prediction, [reference]) with its defaults;
  - `bleu_tokens`: Tokenizer13a()(prediction), plus the tokenizations BLEU really counts;
and at top level `corpus_bleu` = sacrebleu.corpus_bleu(all predictions, [all references]) with defaults.

Writes crates/ft-eval/tests/fixtures/metrics/metrics.json (the folder is deleted and rewritten).

Run from anywhere, with the metrics venv (kept apart from the main reference venv):
    python3 -m venv $HOME/.cache/ft-metrics-venv
    $HOME/.cache/ft-metrics-venv/bin/pip install -r scripts/reference/requirements-metrics.txt
    $HOME/.cache/ft-metrics-venv/bin/python scripts/reference/make_metric_fixtures.py

Deterministic (no randomness, no network): two runs give byte-identical files.
"""

import collections
import json
import os
import platform
import re
import shutil
import string
from collections import Counter
from importlib.metadata import version

import sacrebleu
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "crates", "ft-eval", "tests", "fixtures", "metrics")
DATASET = os.path.join(ROOT, "datasets", "support", "test.jsonl")
SCRIPT = "scripts/reference/make_metric_fixtures.py"
COMMAND = "$HOME/.cache/ft-metrics-venv/bin/python " + SCRIPT


# ------------------------------------------------------------------ official SQuAD v1.1 (verbatim)
# From "Official evaluation script for v1.1 of the SQuAD dataset." (evaluate-v1.1.py).
def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return (normalize_answer(prediction) == normalize_answer(ground_truth))


# ------------------------------------------------------------------ SQuAD v2.0 F1 (verbatim logic)
# From "Official evaluation script for SQuAD version 2.0." (evaluate-v2.0.py): get_tokens + compute_f1.
# Its normalize_answer equals v1.1's (it compiles the article regex with re.UNICODE, the default for str).
def get_tokens(s):
    if not s: return []
    return normalize_answer(s).split()


def compute_f1(a_gold, a_pred):
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


# ------------------------------------------------------------------------------------- cases
LONG_REF = ("Open Console > Networking > DNS, click Add zone, enter your domain name exactly as registered, "
            "then copy the four Acme name servers and paste them into your registrar's settings; propagation "
            "usually takes up to 48 hours.")

# (id, prediction, reference)
CASES = [
    ("identical", "The cat sat on the mat.", "The cat sat on the mat."),
    ("case_punct_article", "The cat.", "cat"),
    ("case_only", "HELLO WORLD", "hello world"),
    ("articles_only_case", "THE END", "end"),
    ("empty_prediction", "", "The cat sat on the mat."),
    ("empty_reference", "The cat sat on the mat.", ""),
    ("both_empty", "", ""),
    ("whitespace_only_prediction", "   \t\n ", "hello"),
    ("punct_only_both", "...", "?!"),
    ("articles_only_vs_empty", "the a an", ""),
    ("single_word_match", "yes", "yes"),
    ("two_words_half_match", "yes please", "yes thanks"),
    ("short_prefix_brevity", "hello", "hello world"),
    ("prediction_longer", "the cat sat on the mat today in the sun", "the cat sat on the mat"),
    ("disjoint", "alpha beta gamma delta", "epsilon zeta eta theta"),
    ("prefix_of_reference", "Open Console > Networking", "Open Console > Networking > DNS, click Add zone"),
    ("reordered", "mat the on sat cat the", "the cat sat on the mat"),
    ("repeated_clipped_the", "the the the the the the the", "the cat is on the mat"),
    ("repeated_clipped_cat", "cat cat cat cat", "cat sat on the mat cat"),
    ("unicode_accents_vs_ascii", "Café résumé naïve", "cafe resume naive"),
    ("unicode_accents_same", "Le café est très bon.", "le café est très bon"),
    ("cjk", "你好世界", "你好 世界"),
    ("cjk_punct_mixed", "你好，世界！Hello", "你好 世界 hello"),
    ("emoji", "Deploy done 🚀🎉", "deploy done 🚀"),
    ("dotted_capital_i", "İstanbul region", "istanbul region"),
    ("curly_apostrophe_quotes", "don’t say “restart”", "don't say \"restart\""),
    ("numbers_commas_decimals", "The total is 1,000.5 dollars.", "The total is 1000.5 dollars."),
    ("numbers_money_decimal", "Costs $0.005 per hour, i.e. 3.6 per month.", "It costs $0.005 per hour."),
    ("numbers_dash_ranges", "Pages 10-20 and 3-4, not 5 - 6.", "pages 10 - 20"),
    ("dots_commas_abbrev", "e.g. U.S.A., etc... 3.14-2.5, a,b", "eg USA etc 3.14 - 2.5 a b"),
    ("hyphens_regions", "us-east-1 and eu-central-1 are well-known regions", "us-east-1, eu-central-1: well known regions"),
    ("apostrophes", "don't stop; it's the user's choice", "do not stop, it is the users choice"),
    ("double_quotes", "He said \"restart the VM\" twice.", "he said restart the vm twice"),
    ("parentheses_brackets", "Acme (Virginia) region [us-east-1] {beta}", "Acme Virginia region us-east-1 beta"),
    ("url", "See https://acme.cloud/reset?user=a&x=1#top for help.", "Go to acme.cloud/reset for help."),
    ("email_underscore", "Email ops_team@acme.cloud now!", "email ops team at acme cloud now"),
    ("console_path", "Console > Compute > Instances", "Console > Compute > Instances > Connect"),
    ("file_paths", "C:\\Users\\acme\\file.txt and /etc/hosts", "/etc/hosts"),
    ("html_entities", "Tom &amp; Jerry &lt;3 &quot;fun&quot; &gt; all", "Tom & Jerry <3 \"fun\" > all"),
    ("hyphen_newline_join", "a well-\nknown issue-\n", "a well-known issue"),
    ("skipped_tag", "<skipped> text here", "text here"),
    ("tokenized_period", "Reboot the instance .", "Reboot the instance."),
    ("tabs_newlines_spaces", "hello\tworld\n\nfoo   bar ", "hello world foo bar"),
    ("unicode_spaces", "hello\u00a0world\u2003again", "hello world again"),
    ("long_support_paraphrase",
     "Go to Console > Networking > DNS and click Add zone, type your domain name as registered, then paste "
     "the four Acme name servers into your registrar's settings; it can take up to 48 hours to propagate.",
     LONG_REF),
    ("long_support_truncated",
     "Open Console > Networking > DNS, click Add zone, enter your domain name exactly as registered, then "
     "copy the four Acme name servers.",
     LONG_REF),
]

# (id, line index in datasets/support/test.jsonl, mutated prediction, reference = last assistant content)
DATASET_CASES = [
    ("support_00_drop_clause", 0,
     "Use the browser console in Console > Compute > Instances > Connect to log in. "
     "Reply here if you need more help with virtual machines.",
     "Use the browser console in Console > Compute > Instances > Connect to log in and add a new SSH key to "
     "the instance. Reply here if you need more help with virtual machines."),
    ("support_01_swap_words", 1,
     "Open Console > DNS > Networking, click Add zone, enter your domain and point your registrar to the four "
     "Acme name servers. Reply here if you need more help with networking.",
     "Open Console > Networking > DNS, click Add zone, enter your domain and point your registrar to the four "
     "Acme name servers. Reply here if you need more help with networking."),
    ("support_02_change_number", 2,
     "Go to acme.cloud/reset, enter your account email and follow the link we send you within 30 minutes. "
     "Reply here if you need more help with your account.",
     "Go to acme.cloud/reset, enter your account email and follow the link we send you within 15 minutes. "
     "Reply here if you need more help with your account."),
    ("support_04_drop_region", 4,
     "Acme Cloud runs in us-east-1 (Virginia), us-west-2 (Oregon) and ap-south-1 (Mumbai). "
     "Reply here if you need more help with virtual machines.",
     "Acme Cloud runs in us-east-1 (Virginia), us-west-2 (Oregon), eu-central-1 (Frankfurt) and ap-south-1 "
     "(Mumbai). Reply here if you need more help with virtual machines."),
    ("support_07_change_price", 7,
     "Static IPs are free while attached to a running instance and cost $0.05 per hour when left unattached. "
     "Reply here if you need more help with networking.",
     "Static IPs are free while attached to a running instance and cost $0.005 per hour when left "
     "unattached. Reply here if you need more help with networking."),
    ("support_13_reword", 13,
     "Open Console > Compute > Instances, choose Actions > Reboot on the instance, then wait about five "
     "minutes. Reply here if you need more help with virtual machines.",
     "Open Console > Compute > Instances, select the instance and choose Actions > Reboot, then wait about "
     "two minutes. Reply here if you need more help with virtual machines."),
    ("support_20_drop_clause", 20,
     "Acme Cloud issues invoices on the 1st of each month for the previous month's usage. "
     "Reply here if you need more help with billing.",
     "Acme Cloud issues invoices on the 1st of each month for the previous month's usage and emails them to "
     "the billing contact. Reply here if you need more help with billing."),
    ("support_27_change_numbers", 27,
     "If monthly uptime falls below the 99.99% SLA, you can claim a 5% service credit within 30 days of the "
     "incident. Reply here if you need more help with billing.",
     "If monthly uptime falls below the 99.9% SLA, you can claim a 10% service credit within 30 days of the "
     "incident. Reply here if you need more help with billing."),
]

NOTES = {
    "em": "SQuAD v1.1 exact_match_score(prediction, reference) as float (1.0/0.0). normalize_answer = "
          "str.lower(); drop every char in string.punctuation (ASCII only: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~); "
          "re.sub(r'\\b(a|an|the)\\b', ' ', s) (Python 3 str regex: Unicode \\b); ' '.join(s.split()) "
          "(str.split() = Unicode whitespace). Both empty after normalization -> 1.0.",
    "f1": "SQuAD v1.1 f1_score(prediction, reference) verbatim, as float: tokens = normalize_answer(x).split(); "
          "num_same = sum((Counter(pred) & Counter(ref)).values()); if num_same == 0 -> 0.0 (this also covers "
          "empty-vs-empty, so v1.1 never divides by zero and returns 0.0 when both are empty); else "
          "p = num_same/len(pred), r = num_same/len(ref), f1 = (2*p*r)/(p+r).",
    "f1_v2": "SQuAD v2.0 compute_f1(reference, prediction): same as f1 except that when either token list is "
             "empty it returns 1.0 if both are empty else 0.0 (differs from f1 only in cases where both "
             "normalize to nothing, e.g. both_empty, punct_only_both, articles_only_vs_empty).",
    "rougeL": "rouge_score.rouge_scorer.RougeScorer(['rougeL'], use_stemmer=False).score(target=reference, "
              "prediction=prediction)['rougeL'] -> precision = lcs/len(pred_tokens), recall = lcs/len(ref_tokens), "
              "fmeasure = 2*p*r/(p+r) (0.0 if p+r == 0). If either token list is empty the library returns "
              "Score(0, 0, 0) (ints), recorded here as 0.0. rouge_tokens_* are rouge_score.tokenize.tokenize(x, None).",
    "sentence_bleu": "sacrebleu.sentence_bleu(prediction, [reference]) with defaults = BLEU(tokenize='13a', "
                     "lowercase=False, smooth_method='exp', effective_order=True, max_ngram_order=4). score is "
                     "0..100; precisions are percentages; counts/totals are clipped matches/hyp n-grams for n=1..4.",
    "corpus_bleu": "sacrebleu.corpus_bleu(predictions, [references]) with defaults = BLEU(tokenize='13a', "
                   "lowercase=False, smooth_method='exp', effective_order=False); sufficient statistics "
                   "(sys_len, ref_len, counts, totals) are summed over all cases, then BLEU is computed once.",
    "bleu_tokens": "Tokenizer13a()(prediction) exactly as requested (no rstrip). BLEU itself tokenizes "
                   "Tokenizer13a()(x.rstrip()) (BLEU._preprocess_segment); those strings are bleu_hyp_tokens / "
                   "bleu_ref_tokens and differ from bleu_tokens only when the prediction ends in whitespace "
                   "(see hyphen_newline_join: rstrip removes the final newline before '-\\n' joining).",
    "exp_smoothing": "compute_bleu: bp = 1.0 if sys_len >= ref_len else (exp(1 - ref_len/sys_len) if sys_len > 0 "
                     "else 0.0). If all counts are 0 -> score 0.0, precisions [0,0,0,0] (early return). Else "
                     "smooth = 1; for n in 1..4: if totals[n-1] == 0: break; if effective_order: eff = n; "
                     "if counts[n-1] == 0: smooth *= 2; p[n-1] = 100/(smooth*totals[n-1]) else p[n-1] = "
                     "100*counts[n-1]/totals[n-1]. eff = 4 unless effective_order. score = bp * exp(sum(my_log(p) "
                     "for p in precisions[:eff]) / eff), my_log(0) = -9999999999.",
    "cases": "datasets/support cases: reference = last assistant message of line `dataset_line` of "
             "datasets/support/test.jsonl (asserted verbatim at generation time), prediction hand-mutated.",
}


def assistant_answers():
    out = []
    with open(DATASET, encoding="utf-8") as f:
        for line in f:
            msgs = json.loads(line)["messages"]
            out.append([m for m in msgs if m["role"] == "assistant"][-1]["content"])
    return out


def bleu_stats(b):
    return {
        "score": float(b.score),
        "counts": [int(x) for x in b.counts],
        "totals": [int(x) for x in b.totals],
        "sys_len": int(b.sys_len),
        "ref_len": int(b.ref_len),
        "bp": float(b.bp),
        "precisions": [float(x) for x in b.precisions],
    }


def main():
    answers = assistant_answers()
    all_cases = [(cid, pred, ref, None) for cid, pred, ref in CASES]
    for cid, line, pred, ref in DATASET_CASES:
        assert answers[line] == ref, f"{cid}: reference is not line {line}'s assistant answer"
        all_cases.append((cid, pred, ref, line))
    ids = [c[0] for c in all_cases]
    assert len(ids) == len(set(ids)), "duplicate case id"

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    tok13a = Tokenizer13a()
    bleu_pre = BLEU()  # only for _preprocess_segment: default tokenizer 13a, lowercase=False

    cases = []
    for cid, pred, ref, line in all_cases:
        r = scorer.score(target=ref, prediction=pred)["rougeL"]
        case = {
            "id": cid,
            "prediction": pred,
            "reference": ref,
            "normalized_prediction": normalize_answer(pred),
            "normalized_reference": normalize_answer(ref),
            "em": float(exact_match_score(pred, ref)),
            "f1": float(f1_score(pred, ref)),
            "f1_v2": float(compute_f1(ref, pred)),
            "rouge_tokens_prediction": rouge_tokenize.tokenize(pred, None),
            "rouge_tokens_reference": rouge_tokenize.tokenize(ref, None),
            "rougeL": {"precision": float(r.precision), "recall": float(r.recall), "fmeasure": float(r.fmeasure)},
            "sentence_bleu": bleu_stats(sacrebleu.sentence_bleu(pred, [ref])),
            "bleu_tokens": tok13a(pred),
            "bleu_hyp_tokens": bleu_pre._preprocess_segment(pred),
            "bleu_ref_tokens": bleu_pre._preprocess_segment(ref),
        }
        if line is not None:
            case["dataset_line"] = line
        cases.append(case)

    preds = [c[1] for c in all_cases]
    refs = [c[2] for c in all_cases]
    corpus = sacrebleu.corpus_bleu(preds, [refs])
    sig_metric = BLEU()
    sig_metric.corpus_score(preds, [refs])

    doc = {
        "generated_by": COMMAND,
        "versions": {
            "python": platform.python_version(),
            "sacrebleu": version("sacrebleu"),
            "rouge-score": version("rouge-score"),
        },
        "sacrebleu_signature": str(sig_metric.get_signature()),
        "notes": NOTES,
        "corpus_bleu": bleu_stats(corpus),
        "cases": cases,
    }

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    path = os.path.join(OUT, "metrics.json")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {os.path.relpath(path, ROOT)}: {len(cases)} cases, corpus BLEU {corpus.score:.4f}")


if __name__ == "__main__":
    main()
