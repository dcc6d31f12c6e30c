"""``lightbert serve``: one model behind HTTP on LitServe, with dynamic batching, checked requests and a page to try it.

The processes: the main one checks the options and loads the model once (a model that cannot load stops here, before
the port is bound); LitServe then starts the inference worker(s) (``ClassifierAPI``, each loading the model and
answering a warm-up before ``/health`` says ready) and the HTTP server(s). Requests are checked in the HTTP server
(``RequestChecks``) before they can join a batch: LitServe fails every request of a batch when one of them raises,
so a bad request must never get that far. SIGTERM and Ctrl+C stop the HTTP servers first (no new connections, the
requests in flight answered), then the workers; sent to every process of the server (a terminal's Ctrl+C, systemd's
stop), they are the main process's to act on (``stop_signal_handler``).
"""

# No ``from __future__ import annotations`` here: LitServe reads decode_request's and encode_response's annotations
# as objects to build its FastAPI route.
import gc
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import litserve
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType
from starlette.requests import Request
from starlette.responses import Response

from lightbert.errors import LightbertError, one_line

HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "0.0.0.0": "0.0.0.0", "::": "::"}
PAGE = Path(__file__).parent / "resources" / "serve" / "index.html"
WARM_UP_TEXTS = ["a warm-up text, so that the first request is as fast as the rest", "short"]
STOP_GRACE_SECONDS = 10.0  # how long requests in flight get to finish after SIGTERM
PRIMITIVE_CACHE_ENTRIES = 32  # oneDNN/ideep primitives an inference worker keeps (see ClassifierAPI.setup)
ARRIVAL_GAP = 0.002  # seconds: under load, a batch keeps taking requests that arrive within this of each other


class BadRequest(Exception):
    """A request the server answers with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class TextsRequest:
    """A checked request: its texts, their second texts (or None) and whether it asked for one text (``"text"``)."""

    texts: list[str]
    pairs: list[str] | None
    single: bool


def parse_request(payload: Any, paired: bool, max_texts: int) -> TextsRequest:
    """Check a decoded JSON body: ``{"text": str}`` or ``{"texts": [str, ...]}``, with ``"text_pair"`` /
    ``"text_pairs"`` for models trained on pairs (required there). Raises ``BadRequest`` saying what is wrong."""
    if not isinstance(payload, dict):
        raise BadRequest('the body must be a JSON object: {"text": "..."} or {"texts": ["...", ...]}')
    unknown = sorted(set(payload) - {"text", "texts", "text_pair", "text_pairs"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}: give text or texts (and text_pair or text_pairs)")
    if ("text" in payload) == ("texts" in payload):
        raise BadRequest('give either "text" (one string) or "texts" (a list of strings)')
    if "text" in payload:
        if "text_pairs" in payload:
            raise BadRequest('"text_pairs" goes with "texts"; with "text" give "text_pair"')
        texts = [_string(payload["text"], "text")]
        pairs = [_string(payload["text_pair"], "text_pair")] if "text_pair" in payload else None
    else:
        if "text_pair" in payload:
            raise BadRequest('"text_pair" goes with "text"; with "texts" give "text_pairs"')
        texts = _strings(payload["texts"], "texts", max_texts)
        pairs = _strings(payload["text_pairs"], "text_pairs", max_texts) if "text_pairs" in payload else None
        if pairs is not None and len(pairs) != len(texts):
            raise BadRequest(f"{len(texts)} texts but {len(pairs)} text_pairs: give one second text per text")
    if paired and pairs is None:
        raise BadRequest(
            'this model was trained on text pairs: give "text_pair" with "text" (or "text_pairs" with "texts")'
        )
    return TextsRequest(texts, pairs, single="text" in payload)


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f'"{field}" must be a string, not {_json_type(value)}')
    _check_encodable(value, field)
    return value


def _check_encodable(value: str, field: str) -> None:
    """A string the tokenizer can take: JSON's ``\\ud800`` escapes decode to lone surrogates, which no UTF-8 text
    holds, and which would fail the whole batch the request joins."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRequest(
            f'"{field}" holds a lone surrogate (\\u{ord(value[err.start]):04x} at character {err.start}), which is not'
            " text: send valid Unicode"
        ) from None


def _strings(value: Any, field: str, max_texts: int) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f'"{field}" must be a list of strings, not {_json_type(value)}')
    if not value:
        raise BadRequest(f'"{field}" is empty: give at least one string')
    if len(value) > max_texts:
        raise BadRequest(f"{len(value)} {field} in one request; at most {max_texts} (split the request)", 413)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRequest(f"{field}[{i}] must be a string, not {_json_type(item)}")
        _check_encodable(item, f"{field}[{i}]")
    return value


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


class RequestChecks:
    """ASGI middleware in the HTTP server: reads ``POST /predict`` bodies up to ``max_body_bytes``, checks them with
    ``parse_request`` and answers a bad one itself (4xx, ``{"error": ...}``), so it never reaches a batch."""

    def __init__(
        self, app: Any, *, path: str, paired: bool, max_texts: int, max_body_bytes: int, loopback: bool = True
    ) -> None:
        self.app = app
        self.path = path
        self.paired = paired
        self.max_texts = max_texts
        self.max_body_bytes = max_body_bytes
        self.loopback = loopback  # bound to this machine only: requests must name it (no DNS rebinding)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.loopback and not is_loopback_host(dict(scope["headers"]).get(b"host")):
            await send_error(send, 421, "this server answers requests to localhost only (its Host header)")
            return
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        media_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":  # a web page can send a form or text/plain cross-site, not JSON
            await send_error(send, 415, "the body must be sent as Content-Type: application/json")
            return
        too_large = f"the body is over {self.max_body_bytes} bytes (send fewer or shorter texts per request)"
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await send_error(send, 413, too_large)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await send_error(send, 413, too_large)
                return
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            await send_error(send, 400, f"the body is not valid JSON ({err})")
            return
        except RecursionError:  # the parser's own depth limit (about 1,000 levels); no request needs more than 2
            await send_error(send, 400, "the body nests too deeply to be a request")
            return
        try:
            parse_request(payload, self.paired, self.max_texts)
        except BadRequest as err:
            await send_error(send, err.status, err.message)
            return
        # LitServe reads a form-encoded body as a form: say it is JSON, as it was checked to be.
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")] + [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            message: dict[str, Any] = await receive()
            return message

        await self.app(scope, replay, send)


LOOPBACK_NAMES = {b"localhost", b"127.0.0.1", b"[::1]"}


def is_loopback_host(host: bytes | None) -> bool:
    """Whether a Host header names this machine (``localhost``, ``127.0.0.1`` or ``[::1]``, with any port); a request
    without one (HTTP/1.0) is let through."""
    if host is None:
        return True
    name = host.strip().lower()
    name = name[: name.find(b"]") + 1] if name.startswith(b"[") else name.rsplit(b":", 1)[0]  # the port dropped
    return name in LOOPBACK_NAMES


async def send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class ServeSettings:
    """What the inference workers need to load and run the model (pickled into each worker process)."""

    model: str
    base: str | None
    trust_checkpoint: bool
    device: str
    precision: str
    batch_size: int
    threshold: float | None
    max_texts: int
    threads: int  # a worker's share of the CPU cores, for a batch while other workers may run
    lone_threads: int  # every core, for a lone request while no other worker runs
    long_texts: Any = None  # lightbert.classifier.LongTexts: truncate, or chunk into windows


class QueueDrainingLoop(BatchedLoop):
    """LitServe's batched loop with another way of making batches: wait for a request, take every request already
    waiting (up to ``max_batch_size``) and, under load only, keep taking requests while they keep coming (each
    within ``ARRIVAL_GAP`` of the last), up to ``batch_timeout`` after the first.

    LitServe's own loop waits ``batch_timeout`` whatever the load, so a lone request always pays it. Here a lone
    request (the previous batch was one request too) goes at once, and under load the time a batch takes to run is
    what gathers the next one; the short wait merges the clients answered by the last batch, who send again within
    a few milliseconds, with those already waiting, rather than leaving them to a batch of their own."""

    previous_batch = 0

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any) -> tuple[list[Any], list[Any]]:
        batch: list[Any] = []
        timed_out: list[Any] = []

        def take(item: Any) -> None:
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, payload = item
            self.put_response(transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR)
            waited_too_long = time.monotonic() - timestamp > lit_api.request_timeout
            if lit_api.request_timeout not in (-1, False) and waited_too_long:
                timed_out.append((response_queue_id, uid))
            else:
                batch.append((response_queue_id, uid, payload))

        try:
            take(request_queue.get(timeout=1.0))
        except Empty:
            return batch, timed_out
        deadline = time.monotonic() + lit_api.batch_timeout
        under_load = self.previous_batch > 1
        while len(batch) < lit_api.max_batch_size:
            try:
                take(request_queue.get_nowait())
                continue
            except Empty:
                pass
            wait = min(ARRIVAL_GAP, deadline - time.monotonic())
            if not under_load or wait <= 0:
                break
            try:
                take(request_queue.get(timeout=wait))
            except Empty:
                break
        self.previous_batch = len(batch)
        return batch, timed_out


class ClassifierAPI(litserve.LitAPI):
    """LitServe's ``LitAPI`` for a lightbert classifier: a batch of requests becomes one ``Classifier.infer`` over
    all their texts (sorted by length, padded per forward pass), split back into one answer per request."""

    def __init__(self, settings: ServeSettings, paired: bool, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=QueueDrainingLoop())
        self.settings = settings
        self.paired = paired
        # How many workers are running a batch: shared memory, inherited by every worker spawned with this object.
        self.running = multiprocessing.get_context("spawn").Value("i", 0)
        # Set once the HTTP servers have stopped (``Server.stop``): until then a stop signal is the main process's to
        # act on (see ``stop_signal_handler``), in every process of the server.
        self.stopping = multiprocessing.get_context("spawn").Value("b", 0)
        self.classifier: Any = None

    def setup(self, device: str) -> None:
        # Requests come in every (batch size x length) shape, and oneDNN (and ideep, for bf16) keep a primitive, with
        # its buffers, for each new one, up to 1,024: the worker's memory would creep up for hours. Uncached, each of
        # the encoder's layers builds its products again (24% slower in fp32, 40% in bf16); a few dozen entries keep
        # those of the pass being run, and the memory flat.
        for cache in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
            os.environ.setdefault(cache, str(PRIMITIVE_CACHE_ENTRIES))
        import torch

        from lightbert.loader import load

        # Ctrl+C reaches every process of the terminal's group, and a service manager's stop (systemd) sends SIGTERM
        # to all of them: the main process stops the server in order, and this worker keeps answering the requests
        # in flight until then.
        handler = stop_signal_handler(self.stopping, os.getppid())
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, handler)
        torch.set_num_threads(self.settings.threads)
        s = self.settings
        self.classifier = load(s.model, s.base, s.trust_checkpoint, s.device, s.precision)
        if s.long_texts is not None:
            self.classifier.long_texts = s.long_texts
        pairs = list(reversed(WARM_UP_TEXTS)) if self.paired else None
        self.classifier.predict(WARM_UP_TEXTS, pairs)  # /health says ready only after the model has answered

    def decode_request(self, request: Request) -> TextsRequest | BadRequest:
        # LitServe passes the JSON body (a dict) when the annotation is ``Request``.
        try:
            return parse_request(request, self.paired, self.settings.max_texts)
        except BadRequest as err:  # checked already by RequestChecks; raising here would fail the whole batch
            return err

    def batch(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)

    def predict(self, requests: list[TextsRequest | BadRequest]) -> list[Any]:
        import torch

        with self.running.get_lock():
            self.running.value += 1
            alone = self.running.value == 1
        # A lone request while no other worker runs has every core (its latency is the pass's); batches, under
        # load, run on the worker's share: one team of threads per core pair or core, not two teams fighting over
        # the cores (a thread pre-empted by another process stalls its whole team at every barrier).
        threads = self.settings.lone_threads if alone and len(requests) == 1 else self.settings.threads
        if threads != torch.get_num_threads():  # setting them resizes thread pools: only when they change
            torch.set_num_threads(threads)
        try:
            return self._predict(requests)
        finally:
            with self.running.get_lock():
                self.running.value -= 1

    def _predict(self, requests: list[TextsRequest | BadRequest]) -> list[Any]:
        answers: list[Any] = list(requests)
        for with_pairs in (False, True):  # texts with and without second texts run apart
            group = [
                i for i, r in enumerate(requests) if isinstance(r, TextsRequest) and (r.pairs is not None) == with_pairs
            ]
            if not group:
                continue
            try:
                self._answer(requests, group, answers)
            except Exception:  # a request the checks let through still fails: it must fail alone
                for i in group:
                    try:
                        self._answer(requests, [i], answers)
                    except Exception as err:
                        answers[i] = failed_request(err)
        return answers

    def _answer(self, requests: list[Any], group: list[int], answers: list[Any]) -> None:
        """Run the requests ``group`` names as one pass and put each one's records in ``answers``."""
        with_pairs = requests[group[0]].pairs is not None
        texts = [t for i in group for t in requests[i].texts]
        pairs = [p for i in group for p in requests[i].pairs] if with_pairs else None
        inference = self.classifier.infer(texts, pairs, self.settings.batch_size)
        records = self.classifier.records(
            inference.logits, self.settings.threshold, inference.truncated, inference.windows
        )
        start = 0
        for i in group:
            answers[i] = (requests[i], records[start : start + len(requests[i].texts)])
            start += len(requests[i].texts)

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any) -> Response:
        if isinstance(output, BadRequest):
            status, content = output.status, {"error": output.message}
        else:
            request, records = output
            status, content = 200, records[0] if request.single else {"predictions": records}
        return Response(json.dumps(content), status_code=status, media_type="application/json")


def failed_request(err: Exception) -> BadRequest:
    """The answer to a request the model failed on, run alone: a 500 with a JSON body, and one line in the log (the
    traceback with ``LIGHTBERT_DEBUG=1``)."""
    import sys
    import traceback

    message = f"{type(err).__name__}: {one_line(str(err))[:200]}"
    print(f"error: a request failed in the model: {message}", file=sys.stderr, flush=True)
    if os.environ.get("LIGHTBERT_DEBUG"):
        traceback.print_exception(err)
    return BadRequest(f"the model failed on this request ({message})", 500)


def check_options(
    host: str, port: int, max_batch_size: int, batch_timeout: float, workers: int, batch_size: int, max_texts: int,
    max_body_bytes: int, timeout: float,
) -> str:  # fmt: skip
    """Check the server options; returns the address to bind."""
    if host not in HOSTS:
        raise LightbertError(
            f"cannot bind host {host!r}", "use 127.0.0.1 (this machine only), 0.0.0.0 (every IPv4 interface) or ::"
        )
    if not 1024 <= port <= 65535:
        raise LightbertError(f"port must be from 1024 to 65535, not {port}", "pass --port 8000")
    for name, value in (("max_batch_size", max_batch_size), ("workers", workers), ("batch_size", batch_size),
                        ("max_texts", max_texts)):  # fmt: skip
        if value < 1:
            raise LightbertError(f"--{name} must be at least 1, not {value}", f"pass --{name} 1 or more")
    if batch_timeout < 0:
        raise LightbertError(f"--batch_timeout must be 0 or more seconds, not {batch_timeout}", "pass 0.01")
    if max_body_bytes < 1024:
        raise LightbertError(f"--max_body_bytes must be at least 1024, not {max_body_bytes}", "pass 1000000")
    if timeout <= 0:
        raise LightbertError(f"--timeout must be more than 0 seconds, not {timeout}", "pass --timeout 30")
    return HOSTS[host]


def default_workers(device_type: str, cores: int) -> int:
    """Inference workers when ``--workers`` is not given: on a CPU with two cores or more, two (each runs its batches
    on half the cores; a lone request gets them all), which keeps the cores busy under load where one worker's
    threads wait on each other (1.3x the requests/s at 32 clients on 2 cores); one on an accelerator."""
    return 2 if device_type == "cpu" and cores >= 2 else 1


def check_port_free(host: str, port: int) -> None:
    """Fail with one line now, not with a traceback from the server later, when another process has the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            raise LightbertError(
                f"cannot listen on {host}:{port}: {err.strerror}", "pass another --port, or stop what uses it"
            ) from None


def display_name(model: str) -> str:
    """The model's name for people (not its full path, which the server need not reveal): the directory or file
    name, with the run's name for a checkpoint in a run's ``checkpoints/``."""
    path = Path(model)
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.name}"
    return path.name or str(model)


def _threshold_shown(classifier: Any, threshold: float | None) -> float | dict[str, float] | None:
    """Multi-label: the threshold applied, or the model's own per label; None for other tasks."""
    if classifier.task != "multi_label":
        return None
    return threshold if threshold is not None else (classifier.thresholds or 0.5)


def model_metadata(classifier: Any, model: str, device: Any, precision: str, threshold: float | None) -> dict[str, Any]:
    """What ``GET /info`` says of the model."""
    import litserve
    import torch
    import transformers

    from lightbert import __version__

    return {
        "name": display_name(model),
        "kind": classifier.info.kind,
        "task": classifier.task,
        "labels": classifier.labels,
        "paired": classifier.paired,
        "max_length": classifier.max_length,
        "precision": precision,
        "device": str(device),  # resolved: cpu, cuda:0, ...
        "threshold": _threshold_shown(classifier, threshold),
        "architecture": (classifier.model.config.architectures or [type(classifier.model).__name__])[0],
        "versions": {
            "lightbert": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "litserve": litserve.__version__,
        },
    }


def stop_signal_handler(stopping: Any, main_pid: int) -> Callable[[int, Any], None]:
    """The SIGTERM/SIGINT handler of the server's other processes (workers, LitServe's manager and message broker,
    the HTTP servers once uvicorn has let go): ignored while the server runs, since the main process (``main_pid``)
    got the same signal and stops everything in order; once ``stopping`` is set (the HTTP servers have answered what
    was in flight), or if the main process is gone, the default action."""

    def handle(signum: int, frame: Any) -> None:
        if stopping.value or os.getppid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handle


class Server(litserve.LitServer):
    """LitServer that stops in order on SIGTERM/SIGINT: LitServe's own shutdown closes its response queues before
    its HTTP servers, which would fail the requests in flight."""

    stopping = False
    http_servers: dict[int, Any] = {}  # noqa: RUF012 (replaced per instance once the HTTP servers start)

    def _init_manager(self, *args: Any, **kwargs: Any) -> Any:
        # LitServe's request queues are its manager's: every put (in the HTTP server's event loop, blocking it) and
        # every get (in the worker) is a round trip through the manager process. A plain multiprocessing queue, a
        # pipe between the HTTP servers (forked from here) and the workers (spawned), costs a few microseconds.
        manager = super()._init_manager(*args, **kwargs)
        spawn = multiprocessing.get_context("spawn")
        paths = list(self.litapi_request_queues)  # type: ignore[has-type]
        self.litapi_request_queues = {path: spawn.Queue() for path in paths}
        return manager

    def _start_server(self, *args: Any, **kwargs: Any) -> dict[int, Any]:
        # The HTTP servers are forked from this process: objects frozen out of the garbage collector's reach are not
        # written to by its passes, so the pages they share with this process stay shared instead of being copied
        # one by one as the servers run (which reads as memory creeping up).
        gc.collect()
        gc.freeze()
        self.http_servers = {} if self.stopping else super()._start_server(*args, **kwargs)
        return self.http_servers

    def stop(self) -> None:
        """Stop the HTTP servers gracefully (no new connections; each answers its requests in flight), then let
        LitServe stop the workers."""
        self.stopping = True
        servers = list(self.http_servers.values())
        for process in servers:
            if process.is_alive() and process.pid:
                os.kill(process.pid, signal.SIGTERM)
        for process in servers:
            process.join(STOP_GRACE_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        self.http_servers.clear()  # stopped already: LitServe's shutdown skips them
        for api in self.litapi_connector:
            api.stopping.value = 1  # the other processes may now end on LitServe's signals
        if self._shutdown_event is not None:
            self._shutdown_event.set()


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    base: str | None = None,
    max_batch_size: int = 32,
    batch_timeout: float = 0.01,
    workers: int | None = None,
    precision: str = "fp32",
    device: str = "auto",
    trust_checkpoint: bool = False,
    batch_size: int = 64,
    threshold: float | None = None,
    max_texts: int = 256,
    max_body_bytes: int = 1_000_000,
    timeout: float = 30.0,
    long_texts: Any = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``model`` (anything ``lightbert.load`` takes) on ``http://host:port`` until SIGTERM or Ctrl+C:
    ``POST /predict``, ``GET /health``, ``GET /info`` and a page at ``/``. ``on_ready(url)`` is called once the
    model answers (default: print the address)."""
    from lightbert.classifier import check_precision, check_threshold
    from lightbert.devices import resolve_device, warn_if_bf16_is_slow
    from lightbert.loader import load

    check_precision(precision)
    resolved = resolve_device(device, precision)
    if precision == "bf16":
        warn_if_bf16_is_slow(resolved)
    cores = os.cpu_count() or 1
    if workers is None:
        workers = default_workers(resolved.type, cores)
    bind = check_options(host, port, max_batch_size, batch_timeout, workers, batch_size, max_texts, max_body_bytes,
                         timeout)  # fmt: skip
    if threshold is not None:
        check_threshold(threshold)
    check_port_free(bind, port)
    classifier = load(model, base, trust_checkpoint, "cpu", "fp32")  # every refusal of load, before binding
    if long_texts is not None:
        long_texts.check(classifier.max_length)
    metadata = model_metadata(classifier, model, resolved, precision, threshold)
    paired = classifier.paired
    del classifier
    gc.collect()

    threads = max(1, cores // workers)
    settings = ServeSettings(
        model, base, trust_checkpoint, device, precision, batch_size, threshold, max_texts, threads, cores, long_texts
    )
    api = ClassifierAPI(settings, paired, max_batch_size, batch_timeout)
    checks = {"path": "/predict", "paired": paired, "max_texts": max_texts, "max_body_bytes": max_body_bytes,
              "loopback": bind == "127.0.0.1"}  # fmt: skip
    server = Server(
        api,
        accelerator="cpu",  # lightbert places the model itself (--device), the same way as predict
        devices=1,
        workers_per_device=workers,
        timeout=timeout,
        model_metadata=metadata,
        middlewares=[(RequestChecks, checks)],
        disable_openapi_url=True,  # its page loads scripts from a CDN: nothing here needs the network
        fast_queue=True,  # answers back over ZeroMQ (a local socket): a few ms less per request than its queues
    )
    server.uvicorn_graceful_timeout = STOP_GRACE_SECONDS
    _add_routes(server.app, metadata)
    url = f"http://{'127.0.0.1' if bind == '0.0.0.0' else '[::1]' if bind == '::' else bind}:{port}"
    announce = on_ready or (lambda at: print(f"serving {metadata['name']} at {at} (Ctrl+C stops)", flush=True))

    def watch_until_ready() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not server.stopping:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        announce(url)
                        return
            except OSError:
                pass
            time.sleep(0.05)

    main_pid = os.getpid()
    in_forked_process = stop_signal_handler(api.stopping, main_pid)

    def on_signal(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # a process forked from here: the manager, the broker, an HTTP server
            in_forked_process(signum, frame)
            return
        if not server.stopping:
            threading.Thread(target=server.stop, name="lightbert-stop", daemon=True).start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    threading.Thread(target=watch_until_ready, name="lightbert-ready", daemon=True).start()
    try:
        server.run(host=bind, port=port, log_level="warning", generate_client_file=False)
    except SystemExit:  # uvicorn exits when it cannot bind: the port was taken since it was checked
        raise LightbertError(f"cannot listen on {bind}:{port}", "pass another --port, or stop what uses it") from None
    except RuntimeError as err:
        if "workers failed to start" in str(err):
            raise LightbertError("the model worker failed to start", "see the messages above") from None
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _add_routes(app: Any, metadata: dict[str, Any]) -> None:
    """The page at ``/`` (and ``/ui``) instead of LitServe's "litserve running", and ``{"error": ...}`` for every
    HTTP error (404, 405, 500, LitServe's 504) as for bad requests."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse

    page = PAGE.read_text(encoding="utf-8")
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/"]

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def http_error(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, HTTPException)
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui", index, methods=["GET"], include_in_schema=False)
    app.add_exception_handler(HTTPException, http_error)
