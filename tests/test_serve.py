"""`lightbert serve`: the same answers as `lightbert predict` over HTTP, bad requests answered alone, and an orderly
stop. Servers are real processes on a free port of 127.0.0.1 (tiny models, so each starts in seconds)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import (
    ServerProcess,
    assert_one_error_line,
    free_port,
    run_cli,
    sentiment_rows,
    serving_api,
    train_checkpoint,
    write_csv,
)

from lightbert.serve import BadRequest, QueueDrainingLoop, default_workers, parse_request

LONG_TEXT = " ".join(["good film"] * 200)  # 400 words: longer than the models here read (128 tokens)


def close(a: dict, b: dict, tolerance: float = 1e-5) -> bool:
    """Two prediction records agree: the same labels, numbers within ``tolerance``."""
    if a.keys() != b.keys():
        return False
    for key in a:
        if key == "probs":
            if a[key].keys() != b[key].keys() or any(abs(a[key][k] - b[key][k]) > tolerance for k in a[key]):
                return False
        elif key == "score":
            if abs(a[key] - b[key]) > tolerance:
                return False
        elif a[key] != b[key]:
            return False
    return True


@pytest.fixture(scope="module")
def pair_checkpoint(tmp_path_factory, tiny_bert) -> Path:
    tmp = tmp_path_factory.mktemp("pairs")
    rows = [(text, "the film", str(float(label))) for text, label in sentiment_rows(16)]
    write_csv(tmp / "pairs.tsv", None, rows)
    return train_checkpoint(tiny_bert, tmp / "run", tmp / "pairs.tsv", text_column=0, text_pair_column=1)


# -- requests, checked before they can join a batch --------------------------------------------------------------------


def test_one_text_or_a_list_of_texts_is_a_request():
    one = parse_request({"text": "good"}, paired=False, max_texts=4)
    many = parse_request({"texts": ["good", "bad"]}, paired=False, max_texts=4)
    assert (one.texts, one.pairs, one.single) == (["good"], None, True)
    assert (many.texts, many.pairs, many.single) == (["good", "bad"], None, False)


def test_a_pair_model_gets_second_texts_in_the_same_shape():
    one = parse_request({"text": "a", "text_pair": "b"}, paired=True, max_texts=4)
    many = parse_request({"texts": ["a", "c"], "text_pairs": ["b", "d"]}, paired=True, max_texts=4)
    assert one.pairs == ["b"] and many.pairs == ["b", "d"]


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        (["good"], 422, "JSON object"),
        ({}, 422, 'either "text"'),
        ({"text": "a", "texts": ["b"]}, 422, 'either "text"'),
        ({"text": 3}, 422, '"text" must be a string, not a number'),
        ({"text": None}, 422, "not null"),
        ({"texts": "good"}, 422, "list of strings"),
        ({"texts": []}, 422, "is empty"),
        ({"texts": ["a", 1]}, 422, "texts[1] must be a string"),
        ({"texts": ["a"] * 5}, 413, "at most 4"),
        ({"texts": ["a", "b"], "text_pairs": ["c"]}, 422, "one second text per text"),
        ({"text": "a", "text_pairs": ["c"]}, 422, '"text_pairs" goes with "texts"'),
        ({"text": "a", "label": "x"}, 422, "unknown field 'label'"),
        ({"text": "\ud800"}, 422, '"text" holds a lone surrogate (\\ud800 at character 0)'),
        ({"texts": ["ok", "a\udfff"]}, 422, '"texts[1]" holds a lone surrogate (\\udfff at character 1)'),
    ],
)
def test_a_bad_request_says_what_is_wrong(payload, status, fragment):
    with pytest.raises(BadRequest) as caught:
        parse_request(payload, paired=False, max_texts=4)
    assert caught.value.status == status and fragment in caught.value.message


def test_a_pair_model_called_without_pairs_is_a_bad_request():
    with pytest.raises(BadRequest, match="trained on text pairs"):
        parse_request({"text": "a"}, paired=True, max_texts=4)


def test_a_batch_answers_each_request_alone_even_with_a_bad_one_inside(trained_checkpoint, classifier):
    api = serving_api(trained_checkpoint)
    requests = [api.decode_request(r) for r in ({"text": "good"}, {"texts": []}, {"texts": ["bad", LONG_TEXT]})]
    answers = [api.encode_response(a) for a in api.unbatch(api.predict(api.batch(requests)))]
    assert [a.status_code for a in answers] == [200, 422, 200]
    assert close(json.loads(answers[0].body), classifier.predict(["good"])[0])
    expected = classifier.predict(["bad", LONG_TEXT])
    got = json.loads(answers[2].body)["predictions"]
    assert all(close(g, e) for g, e in zip(got, expected, strict=True)) and got[1]["truncated"] is True
    assert "error" in json.loads(answers[1].body)


def test_a_request_the_model_fails_on_fails_alone_in_one_log_line(trained_checkpoint, classifier, capfd):
    api = serving_api(trained_checkpoint)
    infer = api.classifier.infer

    def fails_on_poison(texts, pairs=None, batch_size=64):
        if "poison" in texts:
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        return infer(texts, pairs, batch_size)

    api.classifier.infer = fails_on_poison
    requests = [api.decode_request(r) for r in ({"text": "good"}, {"texts": ["x", "poison"]}, {"text": "fine"})]
    answers = [api.encode_response(a) for a in api.unbatch(api.predict(api.batch(requests)))]
    assert [a.status_code for a in answers] == [200, 500, 200]
    assert close(json.loads(answers[0].body), classifier.predict(["good"])[0])
    assert close(json.loads(answers[2].body), classifier.predict(["fine"])[0])
    assert "the model failed on this request (TypeError: TextEncodeInput" in json.loads(answers[1].body)["error"]
    log = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert log == [
        "error: a request failed in the model: TypeError: TextEncodeInput must be Union[TextInputSequence,"
        " Tuple[InputSequence, InputSequence]]"
    ]


# -- workers and their threads -----------------------------------------------------------------------------------------


def test_a_cpu_with_two_cores_or_more_gets_two_workers_by_default_an_accelerator_one():
    assert default_workers("cpu", 2) == 2 and default_workers("cpu", 16) == 2
    assert default_workers("cpu", 1) == 1 and default_workers("cuda", 8) == 1


@pytest.fixture
def thread_counts(monkeypatch) -> list[int]:
    """The thread counts ``predict`` sets, in order (none really set: the session keeps its own)."""
    import torch

    counts: list[int] = []

    def set_num_threads(n: int) -> None:
        counts.append(n)
        monkeypatch.setattr(torch, "get_num_threads", lambda: n)

    monkeypatch.setattr(torch, "set_num_threads", set_num_threads)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 0)
    return counts


def test_a_lone_request_runs_on_every_core_and_a_batch_on_the_workers_share(trained_checkpoint, thread_counts):
    api = serving_api(trained_checkpoint, threads=1, lone_threads=2)
    thread_counts.clear()  # setup's
    api.predict([api.decode_request({"text": "good"})])
    api.predict([api.decode_request({"text": "good"}), api.decode_request({"text": "bad"})])
    assert thread_counts == [2, 1] and api.running.value == 0


def test_a_lone_request_while_another_worker_runs_keeps_to_the_workers_share(trained_checkpoint, thread_counts):
    api = serving_api(trained_checkpoint, threads=1, lone_threads=2)
    thread_counts.clear()
    api.predict([api.decode_request({"text": "good"})])  # alone: every core
    api.running.value = 1  # the other worker, mid-batch
    api.predict([api.decode_request({"text": "good"})])
    assert thread_counts == [2, 1] and api.running.value == 1


def test_serving_in_bf16_says_in_one_line_when_this_cpu_makes_it_slower(trained_checkpoint, monkeypatch, capsys):
    from lightbert.serve import Server, serve

    class Started(Exception):
        pass

    def run(*args, **kwargs):
        raise Started

    monkeypatch.setattr("lightbert.devices.has_bf16_arithmetic", lambda: False)
    monkeypatch.setattr(Server, "run", run)  # everything before the server starts, nothing after
    with pytest.raises(Started):
        serve(str(trained_checkpoint), port=free_port(), precision="bf16", device="cpu")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "bf16 runs slower than fp32" in warnings[0]


# -- batches -----------------------------------------------------------------------------------------------------------


def requests_queue(n: int) -> queue.Queue:
    waiting: queue.Queue = queue.Queue()
    for i in range(n):
        waiting.put((0, f"uid-{i}", time.monotonic(), {"text": f"text {i}"}))
    return waiting


def batch_of(loop: QueueDrainingLoop, waiting: queue.Queue, batch_timeout: float, max_batch_size: int = 32):
    api = SimpleNamespace(max_batch_size=max_batch_size, batch_timeout=batch_timeout, request_timeout=30)
    started = time.monotonic()
    batch, _ = loop.get_batch_requests(api, waiting, transport=None)
    return [uid for _, uid, _ in batch], time.monotonic() - started


def test_a_lone_request_goes_at_once_whatever_the_batch_timeout():
    uids, took = batch_of(QueueDrainingLoop(), requests_queue(1), batch_timeout=5.0)
    assert uids == ["uid-0"] and took < 0.5


def test_the_requests_waiting_share_one_batch_up_to_its_size():
    loop, waiting = QueueDrainingLoop(), requests_queue(40)
    first, _ = batch_of(loop, waiting, batch_timeout=0.0)
    second, _ = batch_of(loop, waiting, batch_timeout=0.0)
    assert first == [f"uid-{i}" for i in range(32)] and second == [f"uid-{i}" for i in range(32, 40)]


def test_under_load_a_batch_takes_requests_that_keep_arriving():
    loop = QueueDrainingLoop()
    loop.previous_batch = 8  # under load
    waiting = requests_queue(1)

    def arrive() -> None:
        for i in range(1, 6):
            time.sleep(0.0005)
            waiting.put((0, f"uid-{i}", time.monotonic(), {"text": "late"}))

    sender = threading.Thread(target=arrive)
    sender.start()
    uids, _ = batch_of(loop, waiting, batch_timeout=1.0)
    sender.join()
    assert len(uids) > 1 and uids[0] == "uid-0"


# -- the server ------------------------------------------------------------------------------------------------------


def test_a_text_gets_the_record_lightbert_predict_gives(server, classifier):
    answer = server.post({"text": "a good and lovely film"})
    assert answer.status == 200
    assert close(answer.body, classifier.predict(["a good and lovely film"])[0])


def test_the_readmes_request_gets_a_record_per_text(server):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    [body] = re.findall(r"curl -s localhost:8000/predict -H 'Content-Type: application/json' -d '(.+)'", readme)
    answer = server.post(json.loads(body))
    assert answer.status == 200 and len(answer.body["predictions"]) == len(json.loads(body)["texts"])


def test_texts_get_predictions_in_order(server, classifier):
    texts = [text for text, _ in sentiment_rows(6, seed=3)]
    answer = server.post({"texts": texts})
    assert answer.status == 200
    expected = classifier.predict(texts)
    assert all(close(g, e) for g, e in zip(answer.body["predictions"], expected, strict=True))


def test_a_text_over_the_models_limit_is_truncated_and_says_so(server):
    answer = server.post({"texts": [LONG_TEXT, "good"]})
    first, second = answer.body["predictions"]
    assert first["truncated"] is True and "truncated" not in second


def test_concurrent_good_and_bad_requests_fail_only_the_bad_ones(server, classifier):
    texts = [text for text, _ in sentiment_rows(24, seed=4)]
    expected = classifier.predict(texts)
    bad = [{"texts": []}, {"text": 7}, {"texts": ["x"] * 9}, {"nothing": 1}, {"text": "\ud800"}, {"texts": ["\udfff"]}]

    def send(i: int):
        if i % 3 == 2:  # every third request is a bad one, among good ones in the same batches
            return "bad", server.post(bad[i % len(bad)])
        return i, server.post({"text": texts[i]})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(len(texts))))
    for i, answer in answers:
        if i == "bad":
            assert 400 <= answer.status < 500 and answer.body["error"], answer
        else:
            assert answer.status == 200 and close(answer.body, expected[i]), (i, answer)


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (b'{"text": "unfinished', 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (json.dumps({"text": "x" * 5000}).encode(), 413, "over 4096 bytes"),
        (json.dumps({"texts": ["a"] * 9}).encode(), 413, "at most 8"),
        (json.dumps({"text": ["a"]}).encode(), 422, '"text" must be a string'),
        (b"[" * 3000, 400, "nests too deeply"),
        (b'{"text": "\\ud800"}', 422, "lone surrogate"),
    ],
)
def test_a_bad_body_gets_a_4xx_answer_with_the_reason(server, raw, status, fragment):
    answer = server.post(raw=raw)
    assert answer.status == status and fragment in answer.body["error"], answer


def raw_request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """A request with exactly the headers given (urllib would add its own Host and Content-Type)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    if body is not None:
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    answer = response.status, json.loads(response.read() or b"null")
    connection.close()
    return answer


GOOD_BODY = json.dumps({"text": "a good film"}).encode()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "192.168.1.5", "localhost.evil.example"])
def test_a_loopback_server_refuses_requests_for_another_host(server, host):
    for method, path, body in (("POST", "/predict", GOOD_BODY), ("GET", "/info", None)):
        status, answer = raw_request(server, method, path, body, {"Host": host, "Content-Type": "application/json"})
        assert status == 421 and "localhost only" in answer["error"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST:1"])
def test_a_loopback_server_answers_requests_that_name_this_machine(server, host):
    status, answer = raw_request(
        server, "POST", "/predict", GOOD_BODY, {"Host": host, "Content-Type": "application/json"}
    )
    assert status == 200 and answer["label"]


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_predict_body_not_sent_as_json_is_refused_415(server, content_type):
    headers = {"Host": "localhost"} | ({"Content-Type": content_type} if content_type else {})
    status, answer = raw_request(server, "POST", "/predict", GOOD_BODY, headers)
    assert status == 415 and "application/json" in answer["error"]


def test_a_json_content_type_with_a_charset_is_json(server):
    headers = {"Host": "localhost", "Content-Type": "application/json; charset=utf-8"}
    assert raw_request(server, "POST", "/predict", GOOD_BODY, headers)[0] == 200


def test_other_http_errors_answer_with_an_error_field_too(server):
    assert server.get("/no-such-page").body == {"error": "Not Found"}
    assert server.get("/predict").status == 405 and "error" in server.get("/predict").body


def test_health_says_ok_once_the_model_answers(server):
    assert server.get("/health").status == 200


def test_info_describes_the_model_and_the_versions(server):
    model = server.get("/info").body["model"]
    assert model["labels"] == ["negative", "positive"] and model["task"] == "single_label"
    assert model["kind"] == "lightbert" and model["paired"] is False
    assert (model["precision"], model["device"]) == ("fp32", "cpu") and model["max_length"] > 0
    assert {"lightbert", "torch", "transformers", "litserve"} <= set(model["versions"])


def test_the_page_is_self_contained(server):
    page = server.get("/").body
    assert "<textarea" in page and 'id="predict"' in page
    assert "http://" not in page and "https://" not in page and "//cdn" not in page  # works offline
    assert server.get("/ui").body == page


def test_it_listens_on_127_0_0_1_only_by_default(server):
    listening = [
        line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:] if line.split()[3] == "0A"
    ]
    assert f"0100007F:{server.port:04X}" in listening
    assert f"00000000:{server.port:04X}" not in listening


def test_a_pair_model_answers_pairs_and_refuses_single_texts(pair_checkpoint):
    from lightbert import load

    expected = load(pair_checkpoint).predict(["good film", "bad film"], pairs=["the film", "a film"])
    api = serving_api(pair_checkpoint, paired=True)
    requests = [{"text": "good film"}, {"texts": ["good film", "bad film"], "text_pairs": ["the film", "a film"]}]
    refused, answer = (api.encode_response(a) for a in api.predict([api.decode_request(r) for r in requests]))
    assert refused.status_code == 422 and "trained on text pairs" in json.loads(refused.body)["error"]
    predictions = json.loads(answer.body)["predictions"]
    assert answer.status_code == 200 and "score" in predictions[0]  # regression records
    assert all(close(g, e) for g, e in zip(predictions, expected, strict=True))


# -- stopping and starting -------------------------------------------------------------------------------------------


def in_flight_then(server: ServerProcess, stop) -> tuple[list, int, float]:
    """Keep 8 clients sending requests of 32 long texts each, and stop the server under that load. Returns the
    answers to the requests that were sent well before the signal and answered after it (in flight), the exit code
    and how long the server took to exit. Requests sent around or after the signal may be refused."""
    signalled = threading.Event()
    sent: list = []  # (sent at, answered at, answer or None)
    waiting: dict[int, float] = {}  # client -> when its unanswered request was sent

    def client(i: int) -> None:
        while not signalled.is_set():
            began = waiting[i] = time.monotonic()
            try:
                answer = server.post({"texts": [f"good film {i}"] + [LONG_TEXT] * 31})
            except OSError:
                answer = None
            waiting.pop(i, None)
            sent.append((began, time.monotonic(), answer))

    clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in clients:
        thread.start()
    # Under load, not after a fixed time: once requests have been answered and one has waited a while (so that a
    # slow machine cannot signal before any request is in flight).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        sent and any(began < time.monotonic() - 0.2 for began in list(waiting.values()))
    ):
        time.sleep(0.05)
    signal_at = time.monotonic()
    signalled.set()
    code = stop()
    elapsed = time.monotonic() - signal_at
    for thread in clients:
        thread.join()
    in_flight = [answer for began, answered, answer in sent if began < signal_at - 0.05 and answered > signal_at]
    return in_flight, code, elapsed


def no_process_left(server: ServerProcess, wait: float = 5.0) -> bool:
    """Whether every process the server started has ended (within ``wait`` seconds: multiprocessing's resource
    tracker ends when it sees its parent gone)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(server.process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_sigterm_answers_the_requests_in_flight_and_exits_0(trained_checkpoint):
    with ServerProcess(trained_checkpoint, "--workers=1") as server:
        answers, code, elapsed = in_flight_then(server, server.stop)
    assert code == 0, server.err
    assert answers and all(a is not None and a.status == 200 for a in answers)
    assert elapsed < 10 and no_process_left(server)
    assert "Traceback" not in server.err


def test_a_signal_to_the_whole_process_group_stops_it_the_same_way(trained_checkpoint):
    """A service manager's stop (systemd's default sends SIGTERM to every process of the service), as Ctrl+C in a
    terminal (SIGINT to every process; every process of the server handles the two alike): each process gets the
    signal, and the server still stops in order."""
    with ServerProcess(trained_checkpoint, "--workers=2") as server:
        answers, code, elapsed = in_flight_then(server, lambda: server.stop(signal.SIGTERM, group=True))
    assert code == 0, server.err
    assert answers and all(a is not None and a.status == 200 for a in answers)
    assert elapsed < 10 and no_process_left(server)
    assert "Traceback" not in server.err


def test_a_model_that_cannot_load_fails_before_the_port_is_bound(tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    port = free_port()
    result = run_cli("serve", broken, "--port", port)
    assert_one_error_line(result, "broken.ckpt")
    with socket.socket() as probe:  # nothing listens there
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_port_in_use_is_one_line(trained_checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", trained_checkpoint, "--port", taken.getsockname()[1])
    assert_one_error_line(result, "cannot listen on 127.0.0.1", "another --port")
