"""Whole-command measurement shared by the benchmark scripts: wall time and the child's own peak RSS."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A child forked from a large process would report that process's RSS as its peak (the high-water mark survives
# fork and exec), so children are started by a small launcher process and measured there.
LAUNCHER = textwrap.dedent("""
    import os, subprocess, sys, time
    start = time.perf_counter()
    child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.stderr.write(child.stderr.read().decode()[-3000:])
    print(wall, usage.ru_maxrss / 1024, code)
""")


def run_child(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a command; exits with its stderr if it fails."""
    result = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True, env=env)
    wall, rss, code = result.stdout.split()
    if int(code) != 0:
        sys.exit(f"{command} failed: {result.stderr}")
    return float(wall), float(rss)
