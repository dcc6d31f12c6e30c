"""Serving under load: `lightbert serve` against FastAPI + pipeline and LitServe + pipeline, same model, one run.

    python benchmarks/serve.py --model runs/version_0/checkpoints/last.ckpt

Each server runs as its own process tree on 127.0.0.1; a bounded load generator (async httpx, keep-alive
connections, a fixed number of requests and a time limit per level) sends one real text per request (SST-2
sentences and AG News articles alternating, from ../shared/data) at each concurrency, after a warm-up. Reported per
server and concurrency: requests/s, texts/s, latency p50/p95/p99, failed requests, and the server's peak memory
(PSS summed over all its processes, sampled every second: RSS would count the pages forked processes share once
per process). For lightbert also: p50 at concurrency 1 against the in-process single-text `Classifier.predict`
time, and whether its memory stayed flat (the peak after the first 10% of its run against the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from measure import machine
from predict import load_texts, model_directory

HERE = Path(__file__).resolve().parent
PEER_NAMES = {"fastapi": "FastAPI + pipeline", "litserve": "LitServe + pipeline"}


PSS_EVERY_SECONDS = 5.0  # how often each server's memory is sampled


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def tree_pss_mib(root: int) -> float:
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    process: subprocess.Popen | None = None
    memory: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    _sampling: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import httpx

        environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(
            self.command, env=environment, stdout=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"{self.name} did not start (exit {self.process.returncode})")
            try:
                if httpx.get(f"{self.url}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            sys.exit(f"{self.name} did not answer /health within 300 s")
        started = time.monotonic()

        def sample() -> None:
            # Reading a process's PSS costs ~16 ms of kernel time on one of the cores the server's threads use (a
            # multi-process server pays it per process): every second, it lengthened lightbert's tail latencies.
            while not self._sampling.wait(PSS_EVERY_SECONDS):
                self.memory.append((time.monotonic() - started, tree_pss_mib(self.process.pid)))

        threading.Thread(target=sample, daemon=True).start()

    def stop(self) -> None:
        self._sampling.set()
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        if self.process:
            with contextlib.suppress(ProcessLookupError):  # what a peer leaves behind (LitServe's workers)
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def peak_memory(self) -> float:
        return max((mib for _, mib in self.memory), default=0.0)


@dataclass
class Level:
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    failures: int
    answers: dict[int, object]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def load(url: str, texts: list[str], concurrency: int, count: int, time_limit: float, keep: int) -> Level:
    """``count`` requests (or as many as ``time_limit`` allows), ``concurrency`` at a time, one text each; keeps the
    answers to the first ``keep`` texts."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    answers: dict[int, object] = {}
    failures = 0
    next_index = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60, trust_env=False) as client:
        started = time.perf_counter()
        deadline = started + time_limit

        async def worker() -> None:
            nonlocal failures, next_index
            while next_index < count and time.perf_counter() < deadline:
                i, next_index = next_index, next_index + 1
                sent = time.perf_counter()
                try:
                    answer = await client.post("/predict", json={"text": texts[i % len(texts)]})
                    ok = answer.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - sent)
                    if i < keep:
                        answers[i] = answer.json()
                else:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Level(concurrency, len(latencies) + failures, seconds, latencies, failures, answers)


def run(coroutine):
    """Run the load generator on uvloop where installed (uvicorn's own loop: less of the CPU the servers share)."""
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def probabilities(answer: object) -> dict[str, float]:
    """Label -> probability from a lightbert record or a pipeline answer (``[{label, score}, ...]``)."""
    if isinstance(answer, dict):
        return answer["probs"]
    while isinstance(answer, list) and answer and isinstance(answer[0], list):
        answer = answer[0]
    return {item["label"]: item["score"] for item in answer}


def single_text_predict_ms(classifier, texts: list[str]) -> float:
    """Median in-process `Classifier.predict([text])` time (ms) over ``texts``, after a warm-up."""
    for text in texts[:20]:
        classifier.predict([text])
    times = []
    for text in texts:
        started = time.perf_counter()
        classifier.predict([text])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by tests/test_readme.py, which checks the README's commands against it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a lightbert .ckpt or an HF directory (default: MiniLM with a random head)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument(
        "--requests",
        default="2000,8000,12000",
        help="requests to lightbert at each level (comma-separated, one per level)",
    )
    parser.add_argument("--peer_requests", type=int, default=1500, help="requests to each peer at each level")
    parser.add_argument("--time_limit", type=float, default=240, help="seconds at most per server and level")
    parser.add_argument("--warmup", type=int, default=300, help="requests before each server's first level")
    parser.add_argument("--peers", default="fastapi,litserve", help="peers to measure (fastapi, litserve; '' none)")
    parser.add_argument("--serve_options", default="", help="more options for lightbert serve, e.g. '--workers 2'")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    counts = [int(c) for c in args.requests.split(",")]
    if len(counts) != len(levels):
        sys.exit("--requests needs one count per --concurrency level")
    print(machine(), flush=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    texts = load_texts(4000)
    keep = 200  # answers compared across servers
    with tempfile.TemporaryDirectory() as tmp:
        directory, label = model_directory(args.model, Path(tmp))
        lightbert_model = args.model or directory
        print(f"model: {label}; texts: SST-2 and AG News alternating, one per request", flush=True)
        alternating = [t for pair in zip(texts[: len(texts) // 2], texts[len(texts) // 2 :], strict=True) for t in pair]
        import lightbert

        # Measured just before and just after lightbert's concurrency-1 level (the server idle), and averaged: the
        # speed of a shared machine drifts by 10-20% within minutes, and the comparison is with that level.
        in_process_model = lightbert.load(lightbert_model)
        in_process_texts = alternating[:300]
        in_process = [single_text_predict_ms(in_process_model, in_process_texts)]
        print(f"in-process Classifier.predict, one text: median {in_process[0]:.1f} ms", flush=True)

        port = free_port()
        ours = [sys.executable, "-m", "lightbert.cli", "serve", lightbert_model, *shlex.split(args.serve_options)]
        servers = [Server("lightbert serve", [*ours, "--port", str(port)], port)]
        for peer in [p for p in args.peers.split(",") if p]:
            port = free_port()
            command = [sys.executable, str(HERE / "serve_peers.py"), peer, "--model", directory, "--port", str(port)]
            servers.append(Server(PEER_NAMES[peer], command, port))

        results: dict[str, list[Level]] = {}
        for server in servers:
            server.start()
            try:
                # Warm-up at the highest concurrency: the server's steady state (allocator pools sized for its
                # largest batches) before anything is measured.
                run(load(server.url, alternating, max(levels), args.warmup, 120, 0))
                results[server.name] = []
                for concurrency, count in zip(levels, counts, strict=True):
                    n = count if server.name == "lightbert serve" else min(count, args.peer_requests)
                    level = run(load(server.url, alternating, concurrency, n, args.time_limit, keep))
                    results[server.name].append(level)
                    if server is servers[0] and concurrency == 1:
                        in_process.append(single_text_predict_ms(in_process_model, in_process_texts))
                        print(f"in-process again, after that level: median {in_process[1]:.1f} ms", flush=True)
                    print(
                        f"{server.name}, concurrency {concurrency}: {level.requests} requests in {level.seconds:.1f} s,"
                        f" {level.failures} failed",
                        flush=True,
                    )
            finally:
                server.stop()

    print()
    print(
        "| server | concurrency | requests | requests/s | texts/s | p50 ms | p95 ms | p99 ms | failed | peak PSS MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for server in servers:
        for level in results[server.name]:
            rate = len(level.latencies) / level.seconds
            print(
                f"| {server.name} | {level.concurrency} | {level.requests:,} | {rate:.1f} | {rate:.1f} |"
                f" {level.percentile(0.50):.1f} | {level.percentile(0.95):.1f} | {level.percentile(0.99):.1f} |"
                f" {level.failures} | {server.peak_memory():.0f} |"
            )
    print()
    ours = results["lightbert serve"]
    for peer in servers[1:]:
        for mine, theirs in zip(ours, results[peer.name], strict=True):
            ratio = (len(mine.latencies) / mine.seconds) / (len(theirs.latencies) / theirs.seconds)
            print(
                f"- concurrency {mine.concurrency}: lightbert {ratio:.2f}x the requests/s of {peer.name}; p99"
                f" {mine.percentile(0.99):.1f} ms vs {theirs.percentile(0.99):.1f} ms"
            )
        agreement = [
            (probabilities(ours[0].answers[i]), probabilities(results[peer.name][0].answers[i]))
            for i in ours[0].answers
            if i in results[peer.name][0].answers
        ]
        if agreement:
            same = sum(max(a, key=a.get) == max(b, key=b.get) for a, b in agreement)
            gap = max(abs(a[k] - b[k]) for a, b in agreement for k in a)
            print(f"- answers vs {peer.name}: {same}/{len(agreement)} same label, max probability difference {gap:.1e}")
    if levels[0] == 1:
        p50 = ours[0].percentile(0.50)
        reference = statistics.mean(in_process)
        print(
            f"- concurrency 1: lightbert p50 {p50:.1f} ms = {p50 / reference:.2f}x the in-process single-text"
            f" predict ({reference:.1f} ms: {' and '.join(f'{t:.1f}' for t in in_process)} before and after the"
            f" level), {p50 - reference:+.1f} ms"
        )
    total = sum(level.requests for level in ours)
    failed = sum(level.failures for level in ours)
    print(f"- lightbert: {total:,} requests, {failed} failed")
    trace = servers[0].memory
    if trace:
        tenth = trace[-1][0] * 0.1
        early = max((mib for at, mib in trace if at <= tenth), default=0.0)
        end = max(mib for _, mib in trace)
        print(
            f"- lightbert memory: peak {early:.0f} MiB after the first 10% of its run, {end:.0f} MiB at the end"
            f" ({(end / early - 1) * 100 if early else float('nan'):+.1f}%)"
        )


if __name__ == "__main__":
    main()
