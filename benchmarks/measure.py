"""Whole-command measurement shared by the benchmark scripts: wall time and the child's own peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# A child forked from a large process would report that process's RSS as its peak (the high-water mark survives
# fork and exec), so children are started by a small launcher process and measured there. A thread samples the
# child's high-water mark (VmHWM) as it runs, so a caller can see when the peak was reached.
LAUNCHER = textwrap.dedent("""
    import json, os, subprocess, sys, threading, time
    start = time.perf_counter()
    child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    trace, done = [], threading.Event()
    def sample():
        while not done.wait(0.25):
            try:
                with open(f"/proc/{child.pid}/status") as f:
                    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
                trace.append((time.perf_counter() - start, hwm / 1024))
            except (OSError, StopIteration):
                pass
    threading.Thread(target=sample, daemon=True).start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.stderr.write(child.stderr.read().decode()[-3000:])
    print(json.dumps({"wall": wall, "rss": usage.ru_maxrss / 1024, "code": code, "trace": trace}))
""")


def run_child_traced(
    command: list[str], env: dict[str, str] | None = None
) -> tuple[float, float, list[tuple[float, float]]]:
    """Wall seconds, peak RSS (MiB) and the peak so far sampled every 0.25 s as (seconds, MiB) pairs, of a
    command; exits with its stderr if it fails."""
    result = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True, env=env)
    outcome = json.loads(result.stdout)
    if outcome["code"] != 0:
        sys.exit(f"{command} failed: {result.stderr}")
    return outcome["wall"], outcome["rss"], [tuple(point) for point in outcome["trace"]]


def run_child(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a command; exits with its stderr if it fails."""
    wall, rss, _ = run_child_traced(command, env)
    return wall, rss


def peak_by(trace: list[tuple[float, float]], seconds: float) -> float:
    """The peak RSS (MiB) a trace had reached ``seconds`` into the run (0 if not sampled by then)."""
    return max((rss for at, rss in trace if at <= seconds), default=0.0)


RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def machine() -> str:
    """One line naming this machine's CPU (model, cores, the flags that decide bf16/int8 speed) and GPU, so figures
    from different machines are never compared as if they came from one."""
    import os

    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    present = [flag for flag in RELEVANT_FLAGS if flag in flags] or ["none of " + ", ".join(RELEVANT_FLAGS)]
    line = f"machine: {model}, {os.cpu_count()} cores; CPU flags: {' '.join(present)}"
    try:
        import torch

        if torch.cuda.is_available():
            line += f"; GPU: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except ImportError:
        pass
    return line


def lightbert(*args: str) -> str:
    """``lightbert ARGS`` as a process; its standard output, or exit with its error."""
    result = subprocess.run([sys.executable, "-m", "lightbert.cli", *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"lightbert {' '.join(args)} failed: {result.stderr[-3000:]}")
    return result.stdout
