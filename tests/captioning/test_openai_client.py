"""The OpenAI-compatible client and captioner against a local chat-completions server (http.server on 127.0.0.1)."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from captioning import grounding
from captioning.captioner import PROMPT_VERSION, CaptionerConfig, CaptionInput, load_captioner
from captioning.openai_client import ChatClient, ChatClientError, chat_completions_url, redact_url
from tests.captioning.conftest import solid

API_KEY = "sk-test-0123456789-very-secret"
KEY_ENV = "ATELIER_TEST_VLM_KEY"


def completion(text: str, finish_reason: str = "stop") -> dict:
    return {"id": "c1", "object": "chat.completion", "model": "qwen3-vl",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


class ChatServer:
    """A scripted chat-completions server: each request takes the next scripted reply (the last one repeats)."""

    def __init__(self, script: list[Callable[[dict], tuple[int, dict, bytes, float]]]) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server does

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                            "client_port": self.client_address[1]})
                    step = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                status, headers, payload, delay = step(body)
                try:
                    time.sleep(delay)
                    self.send_response(status)
                    for key, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(text: str, finish_reason: str = "stop", delay: float = 0.0):
    return lambda body: (200, {}, json.dumps(completion(text, finish_reason)).encode(), delay)


def status(code: int, headers: dict | None = None, delay: float = 0.0):
    return lambda body: (code, headers or {}, json.dumps({"error": {"message": f"status {code}"}}).encode(), delay)


def raw(payload: bytes):
    return lambda body: (200, {}, payload, 0.0)


def echo_title(body: dict) -> tuple[int, dict, bytes, float]:
    """Answer with the title found in the prompt, so results can be matched to their inputs."""
    prompt = body["messages"][-1]["content"][-1]["text"]
    title = prompt.split('Title: "')[1].split('"')[0]
    return 200, {}, json.dumps(completion(f'A test card titled "{title}".')).encode(), 0.05


def config(server: ChatServer, **overrides) -> CaptionerConfig:
    base = {"backend": "openai", "endpoint": server.endpoint, "model": "qwen3-vl", "api_key_env": KEY_ENV,
            "timeout_s": 5.0, "max_retries": 2, "backoff_s": 0.01, "concurrency": 4}
    return CaptionerConfig(**{**base, **overrides})


def sample(i: int = 0, ocr: list | None = None) -> CaptionInput:
    return CaptionInput(f"id{i}", solid(48, 32, (200, 30, 30)), ocr or [],
                        {"embedded": {}, "sidecar": {"title": f"card {i}"}}, f"file:///drop/{i}.png")


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)


def run(cfg: CaptionerConfig, inputs: list[CaptionInput]):
    captioner = load_captioner(cfg)
    captioner.setup()
    return captioner.caption_batch(inputs)


def assert_no_key(results, caplog) -> None:
    for result in results:
        assert API_KEY not in json.dumps(result.to_record()) and API_KEY not in repr(result)
    assert API_KEY not in caplog.text


def test_success_sends_image_prompt_and_key_and_records_lineage(caplog):
    caplog.set_level(logging.DEBUG)
    caption = 'A red card with the word "SALE" printed in white.'
    with ChatServer([reply(caption)]) as server:
        [result] = run(config(server), [sample(0, [("SALE", 0.95), ("~~", 0.1)])])
    assert result.failure is None and result.caption == caption
    assert (result.backend, result.model, result.prompt_version, result.attempts) == (
        "openai", "qwen3-vl", PROMPT_VERSION, 1)
    assert result.inputs["ocr_lines"] == ["SALE"] and result.inputs["metadata_fields"] == ["sidecar.title"]
    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {API_KEY}"
    body = request["body"]
    assert body["model"] == "qwen3-vl" and body["max_tokens"] == 384 and body["temperature"] == 0.0
    image_part, text_part = body["messages"][1]["content"]
    assert image_part["type"] == "image_url"
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (48, 32)
    assert 'Text read by OCR (quote it exactly): "SALE"' in text_part["text"] and "~~" not in text_part["text"]
    assert 'Title: "card 0"' in text_part["text"] and "file:///" not in text_part["text"]
    assert_no_key([result], caplog)


def test_429_is_retried_and_retry_after_is_honoured():
    with ChatServer([status(429, {"Retry-After": "7"}), reply("A red card.")]) as server:
        slept: list[float] = []
        client = ChatClient(server.endpoint, "qwen3-vl", KEY_ENV, max_retries=3, backoff_s=0.01, sleep=slept.append)
        done = client.create([{"role": "user", "content": "hi"}])
    assert done.text == "A red card." and done.attempts == 2 and done.finish_reason == "stop"
    assert slept == [7.0] and len(server.requests) == 2


def test_429_then_success_through_the_captioner(caplog):
    with ChatServer([status(429, {"Retry-After": "0"}), status(503), reply("A red card.")]) as server:
        [result] = run(config(server), [sample()])
    assert result.failure is None and result.caption == "A red card." and len(server.requests) == 3
    assert "retry 1/2" in caplog.text
    assert_no_key([result], caplog)


def test_500s_until_failure(caplog):
    with ChatServer([status(500)]) as server:
        [result] = run(config(server, max_retries=2), [sample()])
    assert len(server.requests) == 3  # first try + 2 retries
    assert result.failure == grounding.CAPTION_BACKEND_ERROR and result.caption == ""
    assert "HTTP 500" in result.failure_detail and "3 attempts" in result.failure_detail
    assert result.attempts == 1  # one caption attempt; the HTTP retries are the client's
    assert_no_key([result], caplog)


def test_timeout_is_a_backend_error():
    with ChatServer([reply("too late.", delay=1.5)]) as server:
        start = time.perf_counter()
        [result] = run(config(server, timeout_s=0.2, max_retries=1), [sample()])
        elapsed = time.perf_counter() - start
    assert result.failure == grounding.CAPTION_BACKEND_ERROR and "timeout" in result.failure_detail
    assert len(server.requests) == 2 and elapsed < 1.5


def test_malformed_json_is_retried_then_reported():
    with ChatServer([raw(b"{not json"), raw(b'{"choices": []}'), raw(b"<html>")]) as server:
        [result] = run(config(server, max_retries=2), [sample()])
    assert result.failure == grounding.CAPTION_BACKEND_ERROR and "malformed_response" in result.failure_detail
    assert len(server.requests) == 3
    with ChatServer([raw(b"{not json"), reply("A red card.")]) as server:
        [result] = run(config(server), [sample()])
    assert result.failure is None and result.caption == "A red card."


def test_client_errors_are_not_retried_and_an_echoed_key_is_redacted(caplog):
    def echo_key(body):
        return 401, {}, json.dumps({"error": f"bad key Bearer {API_KEY}"}).encode(), 0.0

    with ChatServer([status(400)]) as server:
        [result] = run(config(server), [sample()])
    assert result.failure == grounding.CAPTION_BACKEND_ERROR and "HTTP 400" in result.failure_detail
    assert len(server.requests) == 1
    with ChatServer([echo_key]) as server:
        [result] = run(config(server), [sample()])
    assert "HTTP 401" in result.failure_detail and "Bearer ***" in result.failure_detail
    assert_no_key([result], caplog)


def test_refusal_is_retried_once_then_reported(caplog):
    with ChatServer([reply("I'm sorry, but I can't help with that.")]) as server:
        [result] = run(config(server), [sample()])
    assert result.failure == grounding.CAPTION_REFUSAL and result.attempts == 2 and result.caption == ""
    assert "can't help" in result.failure_detail
    first, second = (r["body"] for r in server.requests)
    assert first["temperature"] == 0.0 and second["temperature"] == 0.7 and second["seed"] == 2
    assert_no_key([result], caplog)


def test_truncated_caption_is_retried_with_a_larger_budget():
    with ChatServer([reply("A red card with a", "length"), reply("A red card with a white border.")]) as server:
        [result] = run(config(server, max_new_tokens=100), [sample()])
    assert result.failure is None and result.attempts == 2
    assert [r["body"]["max_tokens"] for r in server.requests] == [100, 150]


def test_fallback_to_grounded_keeps_the_failure_reason():
    with ChatServer([reply("a card a card a card a card a card.")]) as server:
        [result] = run(config(server, fallback_to_grounded=True), [sample(0, [("SALE", 0.9)])])
    assert result.failure == grounding.CAPTION_REPETITIVE and result.fallback_from == "openai"
    assert result.backend == "grounded" and result.attempts == 2
    assert result.caption == ('Card 0. The visible text reads "SALE". A landscape colour image, mostly red; '
                              "vivid colours, warm tones, low contrast, smooth tones throughout.")


def test_labels_credits_and_preamble_are_removed_from_vlm_captions():
    text = ('The image shows a red card with the word "SALE". Title: card 0. Credit: Jane Doe. '
            "License: CC-BY-4.0.")
    with ChatServer([reply(text)]) as server:
        [result] = run(config(server), [sample(0, [("SALE", 0.95)])])
    assert result.failure is None and result.caption == 'A red card with the word "SALE". Card 0.'
    body = server.requests[0]["body"]["messages"][1]["content"][1]["text"]
    assert "credits, licences" in body  # the prompt asks for none, the clean-up removes what comes anyway
    with ChatServer([reply("Credit: Jane Doe. Source: https://example.org.")]) as server:
        [empty] = run(config(server, max_caption_attempts=1), [sample(0)])
    assert empty.failure == grounding.CAPTION_EMPTY and "nothing left" in empty.failure_detail


def test_missing_ocr_text_is_appended_or_retried():
    ocr = [("SALE", 0.95), ("50% off", 0.9)]
    with ChatServer([reply('A red card that says "Sale".')]) as server:
        [appended] = run(config(server), [sample(0, ocr)])
        [failed] = run(config(server, missing_ocr="retry"), [sample(0, ocr)])
    assert appended.failure is None
    assert appended.caption == 'A red card that says "Sale". The visible text reads "SALE" and "50% off".'
    assert appended.inputs["ocr_appended"] == ["SALE", "50% off"]
    assert failed.failure == grounding.CAPTION_MISSING_OCR_TEXT and failed.attempts == 2
    assert '"SALE"' in failed.failure_detail


def test_concurrency_limit_and_input_order():
    with ChatServer([echo_title]) as server:
        results = run(config(server, concurrency=2), [sample(i) for i in range(6)])
    assert [r.caption for r in results] == [f'A test card titled "card {i}".' for i in range(6)]
    assert [r.sample_id for r in results] == [f"id{i}" for i in range(6)]
    assert server.max_in_flight == 2


def test_api_key_handling(monkeypatch, caplog):
    client = ChatClient("http://user:pw@127.0.0.1:9/v1?token=x", "m", KEY_ENV)
    assert API_KEY not in repr(client) and "pw" not in repr(client) and "token" not in repr(client)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(client)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ChatClientError, match=KEY_ENV):
        ChatClient("http://127.0.0.1:9/v1", "m", KEY_ENV)
    captioner = load_captioner(CaptionerConfig(backend="openai", endpoint="http://127.0.0.1:9/v1", model="m",
                                               api_key_env=KEY_ENV))
    with pytest.raises(ChatClientError, match=KEY_ENV):
        captioner.setup()


def test_connection_refused_is_a_backend_error(caplog):
    with ChatServer([reply("x.")]) as server:
        endpoint = server.endpoint  # the port is free again once the server is closed
    [result] = run(CaptionerConfig(backend="openai", endpoint=endpoint, model="m", api_key_env=KEY_ENV,
                                   max_retries=1, backoff_s=0.01), [sample()])
    assert result.failure == grounding.CAPTION_BACKEND_ERROR and "connection" in result.failure_detail
    assert_no_key([result], caplog)


def test_url_helpers():
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    assert redact_url("https://u:p@h:1/v1?key=s") == "https://h:1/v1"


def test_text_only_complete_for_other_modules():
    with ChatServer([reply("short prompt")]) as server:
        client = ChatClient(server.endpoint, "qwen3-vl", None)
        assert client.complete([{"role": "user", "content": "rewrite"}], model="other", max_tokens=8) == "short prompt"
    assert "Authorization" not in server.requests[0]["headers"]
    assert server.requests[0]["body"]["model"] == "other" and server.requests[0]["body"]["max_tokens"] == 8


def test_connections_are_pooled_and_bounded_by_the_concurrency():
    with ChatServer([echo_title]) as server:
        with ChatClient(server.endpoint, "m", concurrency=4, timeout_s=5.0) as client:
            for i in range(10):  # one after another: one connection, kept alive
                client.complete([{"role": "user", "content": [{"type": "text", "text": f'Title: "t{i}"'}]}])
            assert len({r["client_port"] for r in server.requests}) == 1
            results = client.create_many([([{"role": "user", "content": [{"type": "text", "text": f'Title: "c{i}"'}]}],
                                           {}) for i in range(16)])
    assert [r.text for r in results] == [f'A test card titled "c{i}".' for i in range(16)]
    assert len({r["client_port"] for r in server.requests[10:]}) <= 4
