"""A local OpenAI-compatible server for tests: the network edge to the LLM provider, scripted by data.

``/v1/chat/completions`` streams a reply as server-sent events, the way OpenAI, Ollama and vLLM do. The reply is
``replies[last user message]`` if scripted, else an echo. ``/v1/embeddings`` answers deterministic vectors. Every request body is kept in ``chat_requests`` so tests
can assert on exactly what the agent sent. It runs on a thread of its own (``with FakeOpenAIServer() as fake:``)
so that synchronous tests (a console under a pseudo-terminal) can use it too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web


class FakeOpenAIServer:
    def __init__(
        self,
        *,
        replies: dict[str, str] | None = None,
        responder: Callable[[dict[str, Any]], str | ToolCall | None] | None = None,
        embedding_delay: float = 0.0,
    ) -> None:
        self.replies = dict(replies or {})
        self.responder = responder  # sees the whole request body; None falls back to ``replies`` or the echo
        self.embedding_delay = embedding_delay
        self.completion_delay = 0.0  # before a non-streamed answer (the services' own calls): a slow provider
        # How chat requests fail, as real providers do: "500", "429", "malformed" (a 200 whose body is not the
        # API's JSON) or "stall" (headers, then nothing); None answers.
        self.chat_failure: str | None = None
        self.embedding_failure: str | None = None  # the same, for /v1/embeddings
        self._calls = 0
        self._arrivals: dict[str, list[Any]] = {}  # rendezvous of ToolCall(together=n): [arrived, all here]
        self.chat_requests: list[dict[str, Any]] = []
        self.embedding_requests: list[dict[str, Any]] = []
        self.speech_requests: list[dict[str, Any]] = []
        self.transcriptions = 0
        self.transcript = "Where does my sister live?"  # what any audio "said"
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-openai", daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def user_messages(self) -> list[str]:
        """The last user message of each chat request received, in order."""
        return [_last_user_text(body) for body in self.chat_requests]

    async def _start(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcription)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def _stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.embedding_requests.append(body)
        if self.embedding_failure is not None:
            return await self._fail(request, self.embedding_failure)
        if self.embedding_delay:
            await asyncio.sleep(self.embedding_delay)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dimensions = int(body.get("dimensions") or 1536)
        data = [
            {"object": "embedding", "index": i, "embedding": _fake_embedding(text, dimensions)}
            for i, text in reversed(list(enumerate(texts)))  # out of order, as the API allows
        ]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return web.json_response({"object": "list", "data": data, "model": body["model"], "usage": usage})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.chat_requests.append(body)
        if self.chat_failure is not None:
            return await self._fail(request, self.chat_failure)
        said = _last_user_text(body)
        scripted = self.responder(body) if self.responder is not None else None
        if isinstance(scripted, ToolCall):
            if scripted.together > 1:
                await self._rendezvous(said, scripted.together)
            return await self._tool_call(request, body, scripted)
        reply = scripted if scripted is not None else self.replies.get(said, f"I heard you say: {said}")
        if not body.get("stream"):
            await asyncio.sleep(self.completion_delay)
            return web.json_response(_completion(body, reply))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = reply.split(" ")
        for i, word in enumerate(words):
            delta = {"content": word if i == 0 else " " + word} | ({"role": "assistant"} if i == 0 else {})
            await response.write(_event(_chunk(body, delta, finish=None)))
        await response.write(_event(_chunk(body, {}, finish="stop")))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10 + len(words)}
            await response.write(_event(_chunk(body, None, finish=None) | {"choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _rendezvous(self, said: str, count: int) -> None:
        """Hold each request for ``said`` until ``count`` of them arrived (from as many sessions), then answer all."""
        arrived = self._arrivals.setdefault(said, [0, asyncio.Event()])
        arrived[0] += 1
        if arrived[0] >= count:
            arrived[1].set()
        await asyncio.wait_for(arrived[1].wait(), timeout=30)

    async def _fail(self, request: web.Request, failure: str) -> web.StreamResponse:
        if failure in ("500", "429"):
            error = {"error": {"message": "scripted failure", "type": "server_error", "code": None}}
            return web.json_response(error, status=int(failure))
        if failure == "malformed":
            return web.Response(text="<html>502 Bad Gateway</html>{", content_type="application/json")
        if failure == "stall":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await self._stopping.wait()  # until the server stops
            return response
        raise ValueError(f"unknown chat failure {failure!r}")

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        """Raw 24 kHz mono PCM: a 440 Hz tone of about 60 ms per word asked for."""
        body = await request.json()
        self.speech_requests.append(body)
        seconds = 0.06 * max(1, len(str(body.get("input", "")).split()))
        t = np.arange(int(24_000 * seconds)) / 24_000
        pcm = (np.sin(2 * np.pi * 440 * t) * 8_000).astype("<i2").tobytes()
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        await response.write(pcm)
        await response.write_eof()
        return response

    async def _transcription(self, request: web.Request) -> web.Response:
        await request.read()
        self.transcriptions += 1
        return web.json_response({"text": self.transcript})

    async def _tool_call(self, request: web.Request, body: dict[str, Any], call: ToolCall) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self._calls += 1
        delta = {"role": "assistant", "tool_calls": [{"index": 0, "id": f"call_{self._calls}", "type": "function",
                 "function": {"name": call.name, "arguments": call.wire_arguments}}]}  # fmt: skip
        await response.write(_event(_chunk(body, delta, finish=None)))
        await response.write(_event(_chunk(body, {}, finish="tool_calls")))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@dataclass(frozen=True)
class ToolCall:
    """A scripted answer that calls one tool instead of replying. ``arguments`` as text are sent as they are (a
    model's malformed JSON). ``together``: several sessions asked the same thing at once, and each gets its call
    only when all asked, so that their tools run at the same time."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    together: int = 1  # answer only once this many requests for the same user message arrived (racing sessions)

    @property
    def wire_arguments(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


def tool_results(body: dict[str, Any]) -> list[str]:
    """The tool outputs the agent sent back in this request, for its newest user message."""
    messages = body.get("messages", [])
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return [m["content"] for m in messages[last_user + 1 :] if m.get("role") == "tool"]


def _fake_embedding(text: str, dimensions: int) -> list[float]:
    """Deterministic, not unit length (as some compatible servers answer): a vector seeded by the text."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return [float(v) for v in np.random.default_rng(seed).standard_normal(dimensions) * 3.0]


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content)
    return ""


def _chunk(body: dict[str, Any], delta: dict[str, Any] | None, *, finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _completion(body: dict[str, Any], reply: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
