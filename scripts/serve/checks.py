"""The `ok   <what>: <evidence>` / `FAIL <what>: <why>` reporting shared by the check scripts
in this directory: `@check("what")` runs the function at once and records its outcome."""

import sys
import traceback

ran = []
failures = []


def check(what):
    def run(fn):
        ran.append(what)
        try:
            evidence = fn()
        except Exception as e:  # noqa: BLE001 - any exception is a failed check, reported as one
            failures.append(what)
            print(f"FAIL {what}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stderr)
        else:
            print(f"ok   {what}: {evidence}", flush=True)
        return fn

    return run
