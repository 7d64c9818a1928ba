"""The scheduler of ``run_variants.py``: steps (one command each, with the steps they wait for) run ``jobs`` at
a time, one thread each; each finished step leaves a ``done`` file with its CPU and wall seconds, so that a
re-run skips it and a ``--report`` reads the cost of exactly the steps that have finished.
"""
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Step:
    """One command whose output goes to a log file; ``done`` marks it finished; CPU time is measured."""

    def __init__(self, name: str, cmd: List[str], logfile: str, done: str, after=(), priority: int = 0):
        self.name, self.cmd, self.logfile, self.done, self.after = name, cmd, logfile, done, list(after)
        self.priority = priority
        self.cpu: Optional[float] = None
        self.proc = None
        self.t0 = 0.0

    def finished(self) -> bool:
        return os.path.exists(self.done)

    def cpu_seconds(self) -> Optional[float]:
        """The CPU time the step took, from its ``done`` file (None: not finished, or finished by an older
        version of this script that did not record it)."""
        try:
            return float(json.load(open(self.done))["cpu_s"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _start(step: Step, env: Dict[str, str], cwd: str) -> None:
    os.makedirs(os.path.dirname(step.logfile), exist_ok=True)
    log(f"start {step.name}")
    step.t0 = time.time()
    with open(step.logfile, "w") as f:
        step.proc = subprocess.Popen(step.cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def _finish(step: Step, cpu: float) -> None:
    """Record a step that exited 0: its ``done`` file with the CPU and wall seconds."""
    step.cpu = cpu
    os.makedirs(os.path.dirname(step.done), exist_ok=True)
    with open(step.done, "w") as f:
        json.dump({"cpu_s": round(cpu, 2), "wall_s": round(time.time() - step.t0, 2)}, f)
    log(f"done  {step.name}: {time.time() - step.t0:.0f} s wall, {cpu:.0f} s CPU")


def run_steps(steps: List[Step], jobs: int, cwd: str) -> None:
    """Run the unfinished ``steps`` (dependencies in ``after``; lower ``priority`` first among the ready ones)
    with ``jobs`` at a time, in ``cwd``; exit with the failed step's log tail when one fails (the others are
    stopped)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    todo = [s for s in steps if not s.finished()]
    running: Dict[int, Step] = {}
    while todo or running:
        ready = sorted((s for s in todo if all(d.finished() for d in s.after)), key=lambda s: s.priority)
        while ready and len(running) < jobs:
            s = ready.pop(0)
            todo.remove(s)
            _start(s, env, cwd)
            running[s.proc.pid] = s
        if not running:
            sys.exit("steps wait for steps that cannot run: " + ", ".join(s.name for s in todo))
        pid, status, usage = os.wait4(-1, 0)
        s = running.pop(pid, None)
        if s is None:
            continue
        rc = os.waitstatus_to_exitcode(status)
        if rc != 0:
            for other in running.values():
                other.proc.kill()
            tail = open(s.logfile).read()[-3000:]
            sys.exit(f"step {s.name} failed (rc={rc}): {' '.join(s.cmd)}\n--- {s.logfile} ---\n{tail}")
        _finish(s, usage.ru_utime + usage.ru_stime)


def recorded_costs(steps: List[Step]) -> Tuple[Dict[str, float], List[str]]:
    """``({step name: CPU seconds}, names of finished steps without a recorded cost)`` from the done files."""
    timing = {s.name: s.cpu_seconds() for s in steps if s.finished()}
    unknown = sorted(n for n, c in timing.items() if c is None)
    return {n: c for n, c in timing.items() if c is not None}, unknown


def idle_estimate(steps: List[Step], timing: Dict[str, float], jobs: int) -> float:
    """Wall time of ``steps`` on an idle machine with ``jobs`` cores: the same list scheduling, each step
    taking its measured CPU time (one thread each)."""
    end: Dict[str, float] = {}
    free = [0.0] * jobs
    pending = [s for s in steps if s.name in timing]
    while pending:
        ready = [s for s in pending if all(d.name in end for d in s.after if d.name in timing)]
        s = ready[0]
        pending.remove(s)
        start = max([min(free)] + [end[d.name] for d in s.after if d.name in end])
        k = free.index(min(free))
        free[k] = end[s.name] = start + timing[s.name]
    return max(end.values(), default=0.0)
