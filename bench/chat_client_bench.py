"""The openai-compatible client at the concurrency vLLM needs per GPU (issue 13): share of the concurrency bound.

A local chat-completions server (asyncio, in its own process so it never shares the client's GIL) answers every
request after a fixed latency, like a model server at steady state. With C requests in flight and latency L, no
client can exceed C / L requests/s: that bound is the ideal, and the client's share of it is what it costs. Compared:
`ChatClient` (httpx2, one keep-alive pool sized to the concurrency) and the previous transport (urllib, a new
connection per request), both through the same `create_many` threads, semaphore and retry loop.

    python bench/chat_client_bench.py [--latency 0.25] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioning.openai_client import ChatClient  # noqa: E402

REPLY = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "a caption " * 20},
                                 "finish_reason": "stop"}], "model": "bench"}).encode()


def _serve(port_queue, latency: float) -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if b"/connections" in head.split(b"\r\n", 1)[0]:
                    body = str(connections).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    continue
                await reader.readexactly(length)
                await asyncio.sleep(latency)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(REPLY) + REPLY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        port_queue.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class UrllibClient(ChatClient):
    """The transport this project used before: urllib, one new connection per request (kept for comparison)."""

    def _request(self, body: bytes):
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"},
                                         method="POST")
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=self.timeout_s) as r:
            return self._parse(r.read())


def connections(port: int) -> int:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}/connections", timeout=10) as r:
        return int(r.read())


def measure(cls, port: int, concurrency: int, requests: int, payload: str) -> dict:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe."},
                                             {"type": "image_url", "image_url": {"url": payload}}]}]
    client = cls(f"http://127.0.0.1:{port}/v1", "bench", concurrency=concurrency, timeout_s=60, max_retries=0,
                 use_env_proxy=False)
    before = connections(port)
    start, cpu = time.perf_counter(), time.process_time()
    results = client.create_many([(messages, {"max_tokens": 64})] * requests)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    failed = sum(1 for r in results if isinstance(r, Exception))
    opened = connections(port) - before - 1
    if hasattr(client, "close"):
        client.close()
    return {"seconds": seconds, "rps": (requests - failed) / seconds, "failed": failed, "connections": opened,
            "cpu_ms": 1000 * cpu / requests}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.25, help="server seconds per request")
    parser.add_argument("--rounds", type=int, default=4, help="requests = rounds x concurrency")
    args = parser.parse_args()
    queue: mp.Queue = mp.Queue()
    server = mp.get_context("fork").Process(target=_serve, args=(queue, args.latency), daemon=True)
    server.start()
    port = queue.get(timeout=30)
    payload = "data:image/jpeg;base64," + "A" * 40_000  # a ~30 KB JPEG, as the captioner sends at 512 px
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"machine: {os.cpu_count()} CPUs ({cpu}); server latency {args.latency} s; {args.rounds} rounds")
    print("| client | in flight | requests | req/s | bound (C/L) | share of bound | client CPU ms/request | "
          "connections opened | failed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for concurrency in (64, 256):
        bound = concurrency / args.latency
        for name, cls in (("httpx2 pool (ChatClient)", ChatClient), ("urllib per request (before)", UrllibClient)):
            measure(cls, port, concurrency, concurrency, payload)  # warm-up: threads, imports, first connections
            r = measure(cls, port, concurrency, concurrency * args.rounds, payload)
            print(f"| {name} | {concurrency} | {concurrency * args.rounds} | {r['rps']:.0f} | {bound:.0f} | "
                  f"{r['rps'] / bound:.0%} | {r['cpu_ms']:.2f} | {r['connections']} | {r['failed']} |", flush=True)
    server.terminate()


if __name__ == "__main__":
    main()
