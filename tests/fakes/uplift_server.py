"""A local stand-in for Uplift AI's TTS server, speaking the plugin's Socket.IO protocol.

Namespace ``/text-to-speech/multi-stream``, websocket transport, ``auth={"token": key}``. On connect it emits
``message {type: "ready", sessionId}``; on ``synthesize {requestId, text, voiceId, outputFormat}`` it answers
``message {type: "audio", requestId, audio: <base64 PCM>}`` then ``{type: "audio_end", requestId}``, or, when
``fail`` is set, ``{type: "error", requestId, message}``.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import socketio
from aiohttp import web

NAMESPACE = "/text-to-speech/multi-stream"


class UpliftServer:
    def __init__(self, *, api_key: str) -> None:
        self.api_key = api_key
        self.fail = False
        self.requests: list[dict[str, Any]] = []
        self.refused_tokens = 0
        self._sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
        self._sio.on("connect", self._connect, namespace=NAMESPACE)
        self._sio.on("synthesize", self._synthesize, namespace=NAMESPACE)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        self._sio.attach(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _connect(self, sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> bool:
        if not auth or auth.get("token") != self.api_key:
            self.refused_tokens += 1
            return False
        await self._sio.emit("message", {"type": "ready", "sessionId": sid}, to=sid, namespace=NAMESPACE)
        return True

    async def _synthesize(self, sid: str, data: dict[str, Any]) -> None:
        self.requests.append(data)
        request_id = data["requestId"]
        if self.fail:
            await self._sio.emit("message", {"type": "error", "requestId": request_id, "message": "synthesis failed"},
                                 to=sid, namespace=NAMESPACE)  # fmt: skip
            return
        t = np.arange(int(22_050 * 0.2)) / 22_050
        pcm = (np.sin(2 * np.pi * 330 * t) * 8_000).astype("<i2").tobytes()
        audio = base64.b64encode(pcm).decode()
        await self._sio.emit("message", {"type": "audio", "requestId": request_id, "audio": audio}, to=sid,
                             namespace=NAMESPACE)  # fmt: skip
        await self._sio.emit("message", {"type": "audio_end", "requestId": request_id}, to=sid, namespace=NAMESPACE)
