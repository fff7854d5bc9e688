"""Runs a command and reports how busy it kept the CPUs (Linux; used by the benchmark scripts).

    python3 scripts/bench/cpu_use.py [--interval 0.5] -- COMMAND ARGS...

The command's stdout and stderr pass through unchanged; afterwards one line goes to stdout:

    CPU_USE whole=P busiest=Q profile=a,b,c,... cores=N

- whole: (user + sys) / wall of the command and everything it started, in percent of one core
  (200 = two cores busy for the whole run), from getrusage(RUSAGE_CHILDREN) after it exits.
- busiest: the highest per-window figure of the profile.
- profile: the command's process tree (the command and its descendants, from /proc/<pid>/stat
  utime + stime) sampled every --interval seconds, in percent of one core per window. Model
  loading comes first and is mostly one core; decode is the long tail: this is where "every
  core" shows, or does not.
"""

import argparse
import os
import resource
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--interval", type=float, default=0.5)
parser.add_argument("command", nargs=argparse.REMAINDER)
args = parser.parse_args()
command = args.command[1:] if args.command[:1] == ["--"] else args.command
if not command:
    parser.error("no command")

TICK = os.sysconf("SC_CLK_TCK")


def stat_of(pid):
    """(ppid, utime + stime in ticks) of one process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree_ticks(root):
    """CPU ticks used so far by the live processes under root (root included)."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = stat_of(int(name))
            if s is not None:
                stats[int(name)] = s
    children = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


start = time.perf_counter()
proc = subprocess.Popen(command)
profile = []
last_t, last_ticks = start, 0
while proc.poll() is None:
    time.sleep(args.interval)
    now = time.perf_counter()
    ticks = tree_ticks(proc.pid)
    if proc.poll() is None and now > last_t:
        # A process that exited takes its ticks with it: never count the drop as negative use.
        profile.append(100.0 * max(0, ticks - last_ticks) / TICK / (now - last_t))
    last_t, last_ticks = now, ticks
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
whole = 100.0 * (usage.ru_utime + usage.ru_stime) / wall if wall > 0 else 0.0
busiest = max(profile) if profile else whole
sys.stdout.flush()
print(
    f"CPU_USE whole={whole:.0f} busiest={busiest:.0f} "
    f"profile={','.join(f'{p:.0f}' for p in profile)} cores={os.cpu_count()}",
    flush=True,
)
sys.exit(proc.returncode)
