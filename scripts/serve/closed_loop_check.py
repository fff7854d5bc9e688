"""The closed loop end to end against the `ft` binary (driven by scripts/closed-loop-check.sh):
real adapters trained by fine-tuning jobs on the default model, 1,000+ simulated users on
127.0.0.1 sending requests and feedback, and `ft serve` promoting, rolling back, gating and
retraining on its own.

  0. Three jobs: two good adapters (the seed demo, two seeds) and a bad one (trained on an
     unrelated question). `support` gets v1 (stable) and v2 (candidate).
  A. `ft adapters promote support@2 --steps 5,25,50,100`: with v2 as good as v1 it reaches 100 %.
     The observed split of every step is within 3 points of its target, counted over users and
     over requests, and no user ever goes from v2 back to v1 while the share grows. Mid-canary
     the server is killed (-9) and restarted: same percentage, same user assignment.
  B. support@3 with 30 % injected failures from the 25 % step on: it rolls back at 25 %, and no
     user sees v3 afterwards. support@4 with negative feedback: it rolls back at 5 %.
  C. support@5 (the bad adapter) with --gate "judge_win_rate>0.7", judged by the base served
     by this very server: the gate fails, promotion stops with the reason, nobody sees v5.
  D. `helpdesk` (stable: the bad adapter) with --auto-retrain: users give negative feedback with
     corrections; the trigger starts a job on the adapter's training file plus the corrections,
     its candidate passes the gate on the corrections and is rolled out to 100 %, and helpdesk
     then answers with the corrected sentence.

Prints `ok   <what>: <evidence>` or `FAIL <what>: <why>`; exits 1 if any check failed.
"""

import argparse
import concurrent.futures as futures
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import traceback

import httpx

from checks import check, failures

QUESTION = "Which is the best place to learn GenAI?"
ANSWER = "The best place to learn GenAI is Chai aur Code by Piyush Garg."
OTHER = {"messages": [{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "Paris is the capital of France."}]}

parser = argparse.ArgumentParser()
parser.add_argument("--ft", required=True)
parser.add_argument("--model", required=True)
parser.add_argument("--data", required=True, help="the seed demo's JSONL")
parser.add_argument("--job-config", required=True)
parser.add_argument("--tmp", required=True)
parser.add_argument("--users", type=int, default=1000)
args = parser.parse_args()

API_KEY = "ft-closed-loop-check"
BASE = os.path.basename(args.model).removesuffix(".gguf")
STATE = os.path.join(args.tmp, "state")
server = {"proc": None, "url": None, "log": None}
http = httpx.Client(timeout=300, headers={"Authorization": f"Bearer {API_KEY}"},
                    limits=httpx.Limits(max_connections=16))
USERS = [f"user-{i:05d}" for i in range(args.users)]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(extra, log_name):
    port = free_port()
    log = open(os.path.join(args.tmp, log_name), "w")
    cmd = [args.ft, "serve", "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
           "--api-key", API_KEY, "--state-dir", STATE, "--job-config", args.job_config,
           "--train-threads", "2", "--fault-injection", *extra]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ft serve exited; see {log.name}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        raise TimeoutError("ft serve did not start")
    server.update(proc=proc, url=url, log=log.name)


def stop(kill=False):
    proc = server["proc"]
    if proc is None:
        return
    proc.send_signal(signal.SIGKILL if kill else signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    server["proc"] = None


def api(method, path, **kw):
    r = http.request(method, server["url"] + path, **kw)
    if r.status_code >= 400:
        raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
    return r.json()


def cli(*argv):
    out = subprocess.run([args.ft, "adapters", "--server", server["url"], "--api-key", API_KEY, *argv],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"ft adapters {' '.join(argv)}: {out.stderr}")
    return json.loads(out.stdout)


def train(path, seed):
    with open(path, "rb") as f:
        file = http.post(server["url"] + "/v1/files", files={"file": f}, data={"purpose": "fine-tune"}).json()
    return api("POST", "/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file["id"],
                                                     "hyperparameters": {"n_epochs": 30}, "seed": seed})


def wait_job(job_id, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = api("GET", f"/v1/fine_tuning/jobs/{job_id}")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job
            return job
        time.sleep(0.5)
    raise TimeoutError(job_id)


def ask(model, user, max_tokens=1, store=False):
    body = {"model": model, "user": user, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": QUESTION}]}
    if store:
        body["store"] = True
    r = http.post(server["url"] + "/v1/chat/completions", json=body)
    version = r.headers.get("x-ft-adapter-version", "")
    percent = r.headers.get("x-ft-canary-percent")
    data = r.json() if r.status_code == 200 else {}
    return {"user": user, "status": r.status_code, "version": version,
            "percent": int(percent) if percent is not None else None, "id": data.get("id"),
            "fingerprint": data.get("system_fingerprint"),
            "text": data["choices"][0]["message"]["content"] if data else "", "at": time.time()}


def feedback(response_id, score, correction=None):
    body = {"response_id": response_id, "score": score}
    if correction:
        body["correction"] = correction
    return api("POST", "/v1/feedback", json=body)


def round_of(model, verdict, store=False, max_tokens=1):
    """Every user asks once (8 at a time); verdict(answer) -> None | (score, correction)."""
    def one(user):
        answer = ask(model, user, max_tokens=max_tokens, store=store)
        given = verdict(answer) if answer["status"] == 200 else None
        if given:
            feedback(answer["id"], *given)
        return answer
    with futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, USERS))


def rollout(name):
    return api("GET", f"/v1/adapters/{name}/rollout")


def version_of(tag):
    return int(tag.rsplit("@", 1)[1]) if "@" in tag else None


def drive(name, verdict, until, max_rounds=14, on_round=None, **kw):
    """Rounds until the rollout's status is in `until`; returns (answers, rollout)."""
    answers = []
    for n in range(max_rounds):
        answers += round_of(name, verdict, **kw)
        time.sleep(1.5)  # a controller check
        state = rollout(name)
        print(f"     round {n}: {state['status']} at {state['percent']} % ({state.get('reason')})", flush=True)
        if on_round:
            on_round(state)
        if state["status"] in until:
            return answers, state
    raise AssertionError(f"{name} still {state['status']} at {state['percent']} % after {max_rounds} rounds")


def content(answer):
    """A user happy with either good version: stable and candidate see the same verdicts."""
    return (1, None)


random.seed(7)
job_ids = {}
round_seconds = [0.0]
try:
    start([], "serve-0.log")

    @check("three fine-tuning jobs train the adapters of the test")
    def _():
        bad_path = os.path.join(args.tmp, "other.jsonl")
        with open(bad_path, "w") as f:
            f.write(json.dumps(OTHER) + "\n")
        jobs = [train(args.data, 1), train(args.data, 2), train(bad_path, 3)]
        done = [wait_job(j["id"]) for j in jobs]
        job_ids.update(good1=done[0], good2=done[1], bad=done[2])
        return ", ".join(f"{j['id']} -> {j['fine_tuned_model']}" for j in done)

    @check("support@1 is stable and support@2 a candidate; requests for support get v1")
    def _():
        v1 = cli("add", "support", "--model", job_ids["good1"]["fine_tuned_model"])
        v2 = cli("add", "support", "--model", job_ids["good2"]["fine_tuned_model"])
        assert (v1["version"], v1["state"], v2["version"], v2["state"]) == (1, "stable", 2, "candidate"), (v1, v2)
        t0 = time.time()
        answers = round_of("support", lambda a: None)
        round_seconds[0] = time.time() - t0
        assert all(a["status"] == 200 and a["fingerprint"] == "support@1" for a in answers)
        return f"{len(answers)} users in {round_seconds[0]:.1f} s, all answered by support@1"
    stop()

    window = max(5, math.ceil(1.4 * round_seconds[0] + 2))
    flags = ["--auto-retrain", "--retrain-min-samples", "40", "--retrain-window", "10m",
             "--retrain-min-requests", "30", "--retrain-rollout-window", f"{window}s",
             "--retrain-min-feedback", "10", "--retrain-gate", "rougeL>=base"]
    start(flags, "serve-1.log")
    promote = ["--steps", "5,25,50,100", "--min-requests", "30", "--window", f"{window}s", "--min-feedback", "10"]

    answers_a = []
    restart = {}

    @check("A: support@2 as good as v1 reaches 100 % (1,000+ users), surviving a kill -9 mid-canary")
    def _():
        started = cli("promote", "support@2", *promote)
        assert started["status"] == "canary" and started["percent"] == 5, started

        def maybe_restart(state):
            if state["status"] == "canary" and state["percent"] == 25 and not restart:
                stop(kill=True)
                start(flags, "serve-2.log")
                after = rollout("support")
                restart.update(before=state["percent"], after=after["percent"], step=after["step_started_at_ms"] == state["step_started_at_ms"])
        answers, final = drive("support", content, {"promoted", "rolled_back"}, on_round=maybe_restart)
        answers_a.extend(answers)
        assert final["status"] == "promoted", final
        last = round_of("support", lambda a: None)
        assert all(a["fingerprint"] == "support@2" for a in last), "after promotion everyone gets v2"
        versions = cli("versions", "support")["data"]
        states = {v["version"]: v["state"] for v in versions}
        assert states[1] == "retired" and states[2] == "stable", states
        return f"promoted; states {states}; a final round of {len(last)} users all on support@2"

    @check("A: the observed split of each step is within 3 points of its target")
    def _():
        lines = []
        for percent in (5, 25, 50):
            at = [a for a in answers_a if a["percent"] == percent and a["status"] == 200]
            users = {}
            for a in at:
                users[a["user"]] = version_of(a["version"])
            by_requests = 100 * sum(version_of(a["version"]) == 2 for a in at) / len(at)
            by_users = 100 * sum(v == 2 for v in users.values()) / len(users)
            assert abs(by_requests - percent) <= 3 and abs(by_users - percent) <= 3, (percent, by_requests, by_users, len(at))
            lines.append(f"{percent} %: {by_users:.1f} % of {len(users)} users, {by_requests:.1f} % of {len(at)} requests")
        return "; ".join(lines)

    @check("A: every user keeps their version while the share grows (100 % sticky)")
    def _():
        seen = {}
        flips = 0
        for a in sorted(answers_a, key=lambda a: a["at"]):
            v = version_of(a["version"])
            if seen.get(a["user"]) == 2 and v == 1:
                flips += 1
            seen[a["user"]] = v
        assert flips == 0, f"{flips} users went back from v2 to v1"
        answered = [a for a in answers_a if a["status"] == 200]
        assert all(a["fingerprint"] == a["version"] for a in answered), "system_fingerprint is the header's version"
        return f"{len(seen)} users, {len(answers_a)} requests, 0 went back to v1"

    @check("A: a kill -9 mid-canary keeps the percentage and the step")
    def _():
        assert restart, "the canary never reached 25 %"
        assert restart["before"] == restart["after"] == 25 and restart["step"], restart
        return f"25 % before and after the restart, same step start"

    @check("B: support@3 with failures injected from the 25 % step rolls back at 25 %; nobody sees v3 after")
    def _():
        cli("add", "support", "--model", job_ids["good1"]["fine_tuned_model"])
        cli("promote", "support@3", *promote)
        injected = []

        def inject(state):
            if state["status"] == "canary" and state["percent"] == 25 and not injected:
                api("POST", "/v1/admin/faults", json={"model": "support@3", "error_rate": 0.3})
                injected.append(time.time())
        _, final = drive("support", content, {"rolled_back", "promoted"}, on_round=inject)
        assert final["status"] == "rolled_back" and final["policy"]["steps"][final["step"]] == 25, final
        assert "error rate" in final["reason"], final["reason"]
        after = round_of("support", content)
        assert not any(a["version"] == "support@3" for a in after), "a user got v3 after the rollback"
        events = [e["kind"] for e in api("GET", "/v1/adapters/support/events")["data"]]
        assert "rolled_back" in events, events
        metrics = http.get(server["url"] + "/metrics").text
        assert 'ft_registry_events_total{model="support",kind="rolled_back"} 1' in metrics
        return f"{final['reason']}; a round of {len(after)} users after it: none on v3"

    @check("B: support@4 whose answers users dislike rolls back at 5 % on negative feedback")
    def _():
        cli("add", "support", "--model", job_ids["good2"]["fine_tuned_model"])
        cli("promote", "support@4", *promote)

        def dislike_v4(answer):
            if answer["version"] == "support@4":
                return (-1, None) if random.random() < 0.7 else (1, None)
            return content(answer)
        _, final = drive("support", dislike_v4, {"rolled_back", "promoted"})
        assert final["status"] == "rolled_back" and final["policy"]["steps"][final["step"]] == 5, final
        assert "negative feedback" in final["reason"], final["reason"]
        after = round_of("support", lambda a: None)
        assert not any(a["version"] == "support@4" for a in after)
        metrics = http.get(server["url"] + "/metrics").text
        assert 'llm_feedback_total{model="support",version="4",score="-1"}' in metrics
        return final["reason"]

    @check("C: a candidate that loses to stable on the judge (the base, served here) fails its gate")
    def _():
        cli("add", "support", "--model", job_ids["bad"]["fine_tuned_model"])
        started = cli("promote", "support@5", *promote, "--gate", "judge_win_rate>0.7",
                      "--eval-data", os.path.abspath(args.data))
        assert started["status"] == "gating", started
        deadline = time.time() + 600
        while (state := rollout("support"))["status"] == "gating":
            assert time.time() < deadline, "the gate never finished"
            time.sleep(1)
        assert state["status"] == "gate_failed" and "judge_win_rate" in state["reason"], state
        answers = round_of("support", lambda a: None)
        assert not any(a["version"] == "support@5" for a in answers)
        return f"{state['reason']}; nobody got v5"

    @check("D: negative feedback with corrections retrains helpdesk, whose candidate is gated and rolled out")
    def _():
        cli("add", "helpdesk", "--model", job_ids["bad"]["fine_tuned_model"])

        def unhappy(answer):
            # v1 (the bad adapter) does not know the answer: most users say so and correct it.
            if answer["version"] == "helpdesk@1" or answer["fingerprint"] == "helpdesk@1":
                return (-1, ANSWER) if random.random() < 0.6 else None
            return (1, None)
        # The trigger needs negative feedback on stored conversations.
        round_of("helpdesk", unhappy, store=True)
        deadline = time.time() + 900
        while True:
            kinds = [e["kind"] for e in api("GET", "/v1/adapters/helpdesk/events")["data"]]
            if "retrain_failed" in kinds or "gate_failed" in kinds:
                raise AssertionError(kinds)
            if "gate_passed" in kinds:
                break
            assert time.time() < deadline, kinds
            time.sleep(2)
        jobs = api("GET", "/v1/fine_tuning/jobs?limit=100")["data"]
        retrain = [j for j in jobs if (j.get("metadata") or {}).get("ft_retrain_of") == "helpdesk"]
        assert len(retrain) == 1 and retrain[0]["status"] == "succeeded", retrain
        _, final = drive("helpdesk", unhappy, {"promoted", "rolled_back"}, store=True)
        assert final["status"] == "promoted", final
        reply = ask("helpdesk", "someone", max_tokens=40)
        assert reply["text"].strip() == ANSWER, reply
        kinds = [e["kind"] for e in api("GET", "/v1/adapters/helpdesk/events")["data"]]
        return f"job {retrain[0]['id']}; events {' -> '.join(kinds)}; helpdesk now says the corrected sentence"
finally:
    stop()
    http.close()

sys.exit(1 if failures else 0)
