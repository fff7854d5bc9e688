"""The fine-tuning pipeline OpenAI documents, run with the official OpenAI Python SDK unchanged
against a live `ft serve --state-dir ...` (driven by scripts/openai-finetune-check.sh).

Modes:
  main     upload -> create job -> poll -> chat with job.fine_tuned_model (the trained sentence);
           events and checkpoints auto-page; a bad file fails with the code and line; cancel
           mid-run; pause/resume; a retried create returns the same job; a wrong key is 401; an
           oversized upload is 413; deleting the model. Writes {"uninterrupted": job id, "paused": job id} to --out.
  start    uploads the data and creates the job, waits until it has a checkpoint and still
           runs, writes {"job": id, "file": id} to --out (the caller then kills the server).
  finish   after a restart: the file, job and events are still there, the job finishes,
           and its model answers. Reads --out of `start`.
  shared   against an `ft serve --no-train` whose jobs an `ft worker` runs (one PostgreSQL
           store): the job succeeds on the worker and the server answers with its model at
           once, pinned `name@1` too; a cancel sent to the server stops the worker's job.

Each check prints `ok   <what>: <evidence>` or `FAIL <what>: <why>`; the exit status is 1 if
any failed.
"""

import argparse
import json
import sys
import time
import traceback

import openai
from openai import OpenAI

from checks import check, failures

QUESTION = "Which is the best place to learn GenAI?"
ANSWER = "The best place to learn GenAI is Chai aur Code by Piyush Garg."
TERMINAL = {"succeeded", "failed", "cancelled"}

parser = argparse.ArgumentParser()
parser.add_argument("mode", choices=["main", "start", "finish", "shared"])
parser.add_argument("--base-url", required=True, help="http://HOST:PORT/v1")
parser.add_argument("--api-key", required=True)
parser.add_argument("--base-model", required=True, help="the base model's id")
parser.add_argument("--data", required=True, help="the seed demo's JSONL")
parser.add_argument("--bad-data", help="a JSONL whose line 2 is invalid")
parser.add_argument("--max-upload-bytes", type=int, required=True, help="the server's cap")
parser.add_argument("--worker-took-over", action="store_true", help="finish: a worker died, not the server")
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--out", required=True, help="JSON file of job ids for the caller")
args = parser.parse_args()

# Few retries, as a user's client has them; the server must not duplicate a retried create.
client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=2, timeout=120)
state = {}


def wait(job_id, until=TERMINAL, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")


def ask(model):
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=40,
    )
    return reply.choices[0].message.content.strip()


def upload(path):
    with open(path, "rb") as f:
        return client.files.create(file=f, purpose="fine-tune")


def create(file_id, **extra):
    return client.fine_tuning.jobs.create(
        model=args.base_model,
        training_file=file_id,
        hyperparameters={"n_epochs": args.epochs},
        seed=42,
        **extra,
    )


def wait_for_checkpoint(job_id, timeout=600):
    """Until the running job has saved a checkpoint (then it is mid-run)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
        job = client.fine_tuning.jobs.retrieve(job_id)
        if checkpoints and job.status == "running":
            return checkpoints[0].step_number
        assert job.status not in TERMINAL, f"job ended ({job.status}) before it could be interrupted"
        time.sleep(0.05)
    raise TimeoutError("no checkpoint")


def main():
    @check("a wrong API key is a 401")
    def _():
        wrong = OpenAI(base_url=args.base_url, api_key="wrong-key", max_retries=0)
        for call in (wrong.files.list, wrong.fine_tuning.jobs.list):
            try:
                call()
            except openai.AuthenticationError as e:
                assert e.status_code == 401
            else:
                raise AssertionError(f"{call} answered without the key")
        return "files.list and fine_tuning.jobs.list refused"

    @check("files.create(purpose='fine-tune') stores the file")
    def _():
        f = upload(args.data)
        state["file"] = f
        with open(args.data, "rb") as data:
            expected = data.read()
        assert f.id.startswith("file-") and f.status == "processed", f
        assert f.bytes == len(expected) and f.purpose == "fine-tune", f
        assert client.files.retrieve(f.id).id == f.id
        assert client.files.content(f.id).read() == expected
        assert f.id in [x.id for x in client.files.list(purpose="fine-tune")]
        return f"{f.id}, {f.bytes} bytes, content round-trips"

    @check("an upload over --max-upload-bytes is refused with 413")
    def _():
        try:
            client.files.create(file=("big.jsonl", b"x" * (args.max_upload_bytes + 1)), purpose="fine-tune")
        except openai.APIStatusError as e:
            assert e.status_code == 413, e
        else:
            raise AssertionError("the oversized upload was stored")
        return f"{args.max_upload_bytes + 1} bytes refused"

    @check("jobs.create -> succeeded, and the model answers with the trained sentence")
    def _():
        job = create(state["file"].id, suffix="demo")
        assert job.id.startswith("ftjob-") and job.seed == 42, job
        assert job.status in ("validating_files", "queued", "running"), job.status
        again = create(state["file"].id, suffix="demo")
        assert again.id == job.id, f"a retried create made a second job {again.id}"
        done = wait(job.id)
        assert done.status == "succeeded", done
        assert done.fine_tuned_model.startswith(f"ft:{args.base_model}:local:demo:"), done.fine_tuned_model
        assert done.hyperparameters.n_epochs == args.epochs and done.trained_tokens > 0, done
        assert done.result_files, done
        answer = ask(done.fine_tuned_model)
        assert answer == ANSWER, f"the fine-tuned model said {answer!r}"
        base = ask(args.base_model)
        assert base != ANSWER, "the base model already says it"
        state["job"] = done
        return f"{done.fine_tuned_model}: {answer!r} (base: {base[:40]!r}...)"

    @check("list_events auto-pages to the end, with metrics")
    def _():
        job = state["job"]
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=7))
        ids = [e.id for e in events]
        assert len(ids) == len(set(ids)), "an event came twice"
        assert all(i.startswith("ft-event-") for i in ids)
        steps = [e.data["step"] for e in events if e.type == "metrics" and "train_loss" in e.data]
        assert sorted(steps) == list(range(1, args.epochs + 1)), steps
        assert steps == sorted(steps, reverse=True), "events are not newest first"
        losses = {e.data["step"]: e.data["train_loss"] for e in events if e.type == "metrics" and "train_loss" in e.data}
        assert losses[args.epochs] < losses[1] / 4, losses
        assert any("successfully completed" in e.message for e in events)
        accuracy = {e.data["step"]: e.data["train_mean_token_accuracy"] for e in events if e.type == "metrics" and "train_loss" in e.data}
        # The demo's answer is memorised by the end: every label token is the argmax.
        assert accuracy[args.epochs] == 1.0 and accuracy[1] < 1.0, accuracy
        return (
            f"{len(events)} events; loss {losses[1]:.3f} -> {losses[args.epochs]:.4f}, "
            f"token accuracy {accuracy[1]:.2f} -> {accuracy[args.epochs]:.2f}"
        )

    @check("checkpoints.list auto-pages, and a checkpoint is servable")
    def _():
        job = state["job"]
        checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
        assert checkpoints, "no checkpoints"
        for c in checkpoints:
            assert c.id.startswith("ftckpt_") and c.fine_tuning_job_id == job.id
            assert c.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{c.step_number}"
            assert c.metrics.step == c.step_number and c.metrics.train_loss is not None
            assert 0.0 <= c.metrics.train_mean_token_accuracy <= 1.0, c.metrics
        steps = [c.step_number for c in checkpoints]
        assert steps == sorted(steps, reverse=True) and steps[0] == args.epochs, steps
        reply = ask(checkpoints[-1].fine_tuned_model_checkpoint)
        return f"steps {steps}; {checkpoints[-1].fine_tuned_model_checkpoint} answers {reply[:30]!r}..."

    @check("models.retrieve and jobs.list know the fine-tuned model")
    def _():
        job = state["job"]
        assert client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
        assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=1)]
        return "found"

    @check("a bad training file fails the job with invalid_training_file and the line")
    def _():
        bad = upload(args.bad_data)
        # The same Idempotency-Key names the same job, even when the retried body differs.
        key = {"Idempotency-Key": f"check-{time.time_ns()}"}
        first = create(bad.id, extra_headers=key)
        assert create(bad.id, suffix="other", extra_headers=key).id == first.id
        job = wait(first.id)
        assert job.status == "failed", job
        assert job.error.code == "invalid_training_file" and job.error.param == "training_file", job.error
        assert "line 2" in job.error.message, job.error.message
        return job.error.message

    @check("cancel mid-run stops the job and keeps its checkpoint")
    def _():
        job = create(state["file"].id, suffix="cancelled")
        step = wait_for_checkpoint(job.id)
        client.fine_tuning.jobs.cancel(job.id)
        done = wait(job.id)
        assert done.status == "cancelled" and done.fine_tuned_model is None, done
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert checkpoints and checkpoints[0].step_number < args.epochs, checkpoints
        try:
            client.fine_tuning.jobs.cancel(job.id)
        except openai.BadRequestError:
            pass
        else:
            raise AssertionError("cancelling a cancelled job was accepted")
        return f"cancelled after step {checkpoints[0].step_number} (first checkpoint at {step})"

    @check("pause then resume finishes the job")
    def _():
        job = create(state["file"].id, suffix="paused")
        wait_for_checkpoint(job.id)
        client.fine_tuning.jobs.pause(job.id)
        paused = wait(job.id, until={"paused"} | TERMINAL)
        assert paused.status == "paused", paused
        client.fine_tuning.jobs.resume(job.id)
        done = wait(job.id)
        assert done.status == "succeeded", done
        assert ask(done.fine_tuned_model) == ANSWER
        state["paused"] = done
        return f"{done.id} paused, resumed, succeeded"

    @check("models.delete forgets the fine-tuned model")
    def _():
        name = state["paused"].fine_tuned_model
        assert client.models.delete(name).deleted
        try:
            ask(name)
        except openai.NotFoundError:
            pass
        else:
            raise AssertionError("the deleted model still answers")
        return name

    with open(args.out, "w") as f:
        json.dump({"uninterrupted": state["job"].id, "paused": state["paused"].id}, f)


def start():
    f = upload(args.data)
    job = create(f.id, suffix="restarted")
    step = wait_for_checkpoint(job.id)
    with open(args.out, "w") as out:
        json.dump({"job": job.id, "file": f.id}, out)
    print(f"ok   job {job.id} is running with a checkpoint at step {step}", flush=True)


def finish():
    # `start` wrote the ids before the kill; `finish` reads them from the same file.
    with open(args.out) as f:
        ids = json.load(f)

    @check("after kill -9 the file, the job and its events are there, and it finishes")
    def _():
        assert client.files.retrieve(ids["file"]).id == ids["file"]
        done = wait(ids["job"])
        assert done.status == "succeeded", done
        events = list(client.fine_tuning.jobs.list_events(ids["job"]))
        messages = [e.message for e in events]
        # A restarted server says so; with a shared store another worker took the job over.
        assert args.worker_took_over or any("restarted" in m for m in messages), messages
        assert any(m.startswith("Resumed at step") for m in messages), messages
        answer = ask(done.fine_tuned_model)
        assert answer == ANSWER, answer
        return f"{done.fine_tuned_model} answers {answer!r}"


def shared():
    @check("a job run by an ft worker is served by ft serve at once, also as name@1 and its checkpoints")
    def _():
        job = wait(create(upload(args.data).id, suffix="worker").id)
        assert job.status == "succeeded", job
        answer = ask(job.fine_tuned_model)
        assert answer == ANSWER, answer
        pinned = ask(f"{job.fine_tuned_model}@1")
        assert pinned == ANSWER, pinned
        checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[-1]
        ask(checkpoint.fine_tuned_model_checkpoint)  # the worker's checkpoint, served here
        try:
            ask(f"{job.fine_tuned_model}@2")
        except openai.NotFoundError:
            pass
        else:
            raise AssertionError("a version that does not exist answered")
        return f"{job.fine_tuned_model}@1 answers {pinned!r}"

    @check("a cancel sent to the server stops the job on the worker")
    def _():
        job = create(upload(args.data).id, suffix="remote-cancel")
        wait_for_checkpoint(job.id)
        client.fine_tuning.jobs.cancel(job.id)
        done = wait(job.id)
        assert done.status == "cancelled", done
        steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id) if e.type == "metrics"]
        assert max(steps) < args.epochs, steps
        return f"cancelled after step {max(steps)}"


{"main": main, "start": start, "finish": finish, "shared": shared}[args.mode]()
if failures:
    print(f"{len(failures)} check(s) failed: {', '.join(failures)}", flush=True)
    sys.exit(1)
