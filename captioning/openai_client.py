"""A client for OpenAI-compatible chat-completions endpoints (vLLM, SGLang, TGI, OpenAI) on httpx2.

`ChatClient.complete(messages, **params) -> str` is all most callers need (the captioner, the prompt rewriter).
Requests go through one `httpx2.Client` per `ChatClient`: a keep-alive connection pool sized to the concurrency
bound, so 256 requests in flight reuse 256 connections instead of opening (and TIME_WAIT-ing) one per request as
urllib did (bench/chat_client_bench.py). It limits concurrent requests with a semaphore shared by every thread
using the client, retries 408/409/425/429/5xx
responses, timeouts, connection errors and malformed bodies with exponential backoff and jitter (honouring
`Retry-After`), and reads the API key from an environment variable whose *name* is configured. The key is never
logged and never appears in a repr, an exception message or a returned record.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx2
from PIL import Image

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying (any other 5xx is retried too)."""


class ChatClientError(RuntimeError):
    """A request that failed for good (after the retries it was allowed)."""

    def __init__(self, message: str, kind: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.kind = kind
        """'http_status', 'timeout', 'connection', 'malformed_response' or 'config'."""
        self.status = status
        """The last HTTP status, when there was one."""
        self.attempts = attempts
        """HTTP requests made."""


class _Retryable(Exception):
    def __init__(self, message: str, kind: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.status, self.retry_after = kind, status, retry_after


@dataclass(frozen=True)
class ChatCompletion:
    """The useful part of one chat-completions response."""

    text: str
    """The first choice's message content (text parts joined)."""
    finish_reason: str | None
    """'stop', 'length', ... as the server reported it."""
    model: str | None = None
    """The model name the server reported."""
    usage: dict[str, Any] = field(default_factory=dict)
    """Token counts, when reported."""
    attempts: int = 1
    """HTTP requests it took (1 = no retry)."""


def chat_completions_url(endpoint: str) -> str:
    """`http://host:8000/v1` -> `http://host:8000/v1/chat/completions`; a full URL is kept as it is."""
    url = endpoint.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def redact_url(url: str) -> str:
    """The URL without user info or query string (either may carry credentials), for logs and errors."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def image_data_url(image: Image.Image, max_side: int | None = None, quality: int = 90) -> str:
    """Encode an image as a `data:image/jpeg;base64,...` URL for an `image_url` content part.

    Args:
        image: any Pillow image (converted to RGB; transparency composited on white).
        max_side: downscale so the longer side is at most this (None: keep the size).
        quality: JPEG quality.
    """
    img = image
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("RGB")
    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_part(image: Image.Image, max_side: int | None = None) -> dict[str, Any]:
    """An OpenAI `image_url` content part holding the image inline."""
    return {"type": "image_url", "image_url": {"url": image_data_url(image, max_side)}}


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ChatClient:
    """A thread-safe client for one OpenAI-compatible chat-completions endpoint and model.

    Args:
        endpoint: base URL (`http://vllm:8000/v1`) or the full `/chat/completions` URL.
        model: the served model name sent in every request.
        api_key_env: name of the environment variable holding the API key (None: no `Authorization` header).
        timeout_s: socket timeout of each HTTP request (connect and each read).
        max_retries: retries after the first request (so at most `max_retries + 1` requests per call).
        backoff_s: first retry delay; doubled per retry, with jitter in [50%, 100%].
        backoff_max_s: cap of the exponential delay.
        max_retry_after_s: cap of a server's `Retry-After`.
        concurrency: most requests in flight at once across all threads using this client.
        use_env_proxy: honour `http_proxy`/`https_proxy`/`no_proxy` (and other environment settings).
        sleep: the sleep function (tests replace it).
        seed: seed of the jitter's random generator (None: nondeterministic).

    Raises:
        ChatClientError: (kind 'config') when `api_key_env` names a variable that is not set.
    """

    def __init__(self, endpoint: str, model: str, api_key_env: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 4, backoff_s: float = 1.0, backoff_max_s: float = 30.0,
                 max_retry_after_s: float = 120.0, concurrency: int = 8, use_env_proxy: bool = True,
                 sleep: Callable[[float], None] = time.sleep, seed: int | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.url = chat_completions_url(endpoint)
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self.concurrency = concurrency
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrency)
        # one keep-alive connection per possible request in flight; the pool never waits for a connection longer
        # than a request may take
        self._http = httpx2.Client(
            timeout=httpx2.Timeout(timeout_s), trust_env=use_env_proxy,
            limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency,
                                 keepalive_expiry=60.0))
        self.__key: str | None = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ChatClientError(f"environment variable {api_key_env} (the API key) is not set or empty",
                                      "config")
            self.__key = key

    def __repr__(self) -> str:
        return (f"ChatClient(url={redact_url(self.url)!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
                f"concurrency={self.concurrency}, timeout_s={self.timeout_s}, max_retries={self.max_retries})")

    def __getstate__(self) -> dict[str, Any]:  # pickled into Ray actors: the key is read again from the environment
        raise TypeError("ChatClient is not picklable; build it in the worker (setup()) instead")

    def close(self) -> None:
        """Close the pooled connections (the client is unusable afterwards)."""
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        if self.__key and self.__key in text:
            text = text.replace(self.__key, "***")
        return text

    def complete(self, messages: Sequence[dict[str, Any]], **params: Any) -> str:
        """Send one chat-completions request and return the first choice's text.

        Args:
            messages: OpenAI chat messages (content as a string or a list of `text`/`image_url` parts).
            **params: extra request fields (`max_tokens`, `temperature`, `top_p`, `seed`, `stop`, ...).

        Raises:
            ChatClientError: when the request fails after its retries.
        """
        return self.create(messages, **params).text

    def create(self, messages: Sequence[dict[str, Any]], **params: Any) -> ChatCompletion:
        """Like `complete`, returning the finish reason, reported model, usage and attempts too."""
        body = json.dumps({"model": self.model, "messages": list(messages), **params}).encode("utf-8")
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._slots:
                    completion = self._request(body)
                return ChatCompletion(completion.text, completion.finish_reason, completion.model, completion.usage,
                                      attempt)
            except _Retryable as err:
                message = self._redact(str(err))
                if attempt > self.max_retries:
                    raise ChatClientError(f"chat request to {redact_url(self.url)} failed after {attempt} attempts: "
                                          f"{message}", err.kind, err.status, attempt) from None
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                with self._rng_lock:
                    delay *= 0.5 + 0.5 * self._rng.random()
                if err.retry_after is not None:
                    delay = max(delay, min(err.retry_after, self.max_retry_after_s))
                log.warning("chat request to %s failed (%s); retry %d/%d in %.2f s", redact_url(self.url), message,
                            attempt, self.max_retries, delay)
                self._sleep(delay)

    def create_many(self, requests: Sequence[tuple[Sequence[dict[str, Any]], dict[str, Any]]]
                    ) -> list[ChatCompletion | ChatClientError]:
        """Send many requests on `concurrency` threads; results (or the error of each failed one) in input order."""
        if not requests:
            return []

        def one(request: tuple[Sequence[dict[str, Any]], dict[str, Any]]) -> ChatCompletion | ChatClientError:
            try:
                return self.create(request[0], **request[1])
            except ChatClientError as err:
                return err

        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)),
                                thread_name_prefix="chat-client") as pool:
            return list(pool.map(one, requests))

    def _request(self, body: bytes) -> ChatCompletion:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        try:
            response = self._http.post(self.url, content=body, headers=headers)
        except httpx2.TimeoutException as err:
            raise _Retryable(f"timed out after {self.timeout_s} s ({type(err).__name__})", "timeout") from None
        except (httpx2.TransportError, OSError) as err:
            raise _Retryable(f"connection: {type(err).__name__}: {err}", "connection") from None
        status = response.status_code
        if status >= 400:
            detail = response.content[:2048].decode("utf-8", errors="replace")
            message = f"HTTP {status}: {detail.strip()[:300]}"
            if status in RETRYABLE_STATUS or status >= 500:
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                raise _Retryable(message, "http_status", status, retry_after)
            raise ChatClientError(f"chat request to {redact_url(self.url)} failed: {self._redact(message)}",
                                  "http_status", status)
        return self._parse(response.content)

    @staticmethod
    def _parse(raw: bytes) -> ChatCompletion:
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            content = choice["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            snippet = raw[:120].decode("utf-8", errors="replace")
            raise _Retryable(f"malformed response ({type(err).__name__}): {snippet!r}", "malformed_response") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if content is not None and not isinstance(content, str):
            raise _Retryable(f"malformed response: content is {type(content).__name__}", "malformed_response")
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        return ChatCompletion(content or "", choice.get("finish_reason"), payload.get("model"), usage)
