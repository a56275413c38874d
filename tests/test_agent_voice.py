"""A voice turn without a room: a WAV spoken by espeak-ng goes through the session's audio input, the real Silero
VAD and turn detection, the fake STT, the Companion's llm_node (with the user's memories) and the fake TTS."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import uuid
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import AgentSession, io
from livekit.agents.utils import http_context
from livekit.plugins import silero

from agent import Companion, build_providers, build_session, finish_companion, start_companion, turn_detection
from core.config import Settings
from infrastructure.storage.sqlite import SqliteStorage
from services.container import Process, Session, open_process, open_session
from tests.fakes.openai_server import FakeOpenAIServer
from tests.waiting import eventually

pytestmark = pytest.mark.slow
MAYA = "My sister Maya lives in Lisbon"
RATE = 16_000
FRAME = RATE // 50  # 20 ms


def spoken(text: str, folder: Path) -> np.ndarray:
    """``text`` as 16 kHz mono int16 samples, spoken by espeak-ng and resampled by sox."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.fail("espeak-ng and sox are needed (`make test` installs them)")
    raw, wav = folder / "raw.wav", folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(wav)], check=True)
    with wave.open(str(wav)) as f:
        return np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16)


class Microphone(io.AudioInput):
    """Silence, the speech, then silence, in real time: endpointing runs on wall-clock timers."""

    def __init__(self, speech: np.ndarray) -> None:
        super().__init__(label="test microphone")
        silence = np.zeros(RATE, dtype=np.int16)
        self._samples = np.concatenate([silence, speech, silence, silence, silence])
        self._position = 0
        self._next = time.monotonic()

    async def __anext__(self) -> rtc.AudioFrame:
        chunk = self._samples[self._position : self._position + FRAME]
        self._position += FRAME
        if len(chunk) < FRAME:
            chunk = np.zeros(FRAME, dtype=np.int16)  # keep listening, in silence
        self._next += 0.02
        await asyncio.sleep(max(0.0, self._next - time.monotonic()))
        return rtc.AudioFrame(chunk.tobytes(), RATE, 1, FRAME)


class Speaker(io.AudioOutput):
    def __init__(self) -> None:
        super().__init__(label="test speaker", capabilities=io.AudioOutputCapabilities(pause=False))
        self.seconds = 0.0
        self._segment = 0.0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if self._segment == 0.0:
            self.on_playback_started(created_at=time.time())
        await super().capture_frame(frame)
        duration = frame.samples_per_channel / frame.sample_rate
        self.seconds += duration
        self._segment += duration

    def flush(self) -> None:
        super().flush()
        played, self._segment = self._segment, 0.0
        self.on_playback_finished(playback_position=played, interrupted=False)

    def clear_buffer(self) -> None:
        played, self._segment = self._segment, 0.0
        self.on_playback_finished(playback_position=played, interrupted=True)


@dataclass
class VoiceRig:
    fake: FakeOpenAIServer
    process: Process
    services: Session
    session: AgentSession
    speaker: Speaker
    agent: Companion

    def replies_asked(self) -> list[dict[str, Any]]:
        return [r for r in self.fake.chat_requests if r["messages"][0]["content"].startswith("You are Companion")]


@contextlib.asynccontextmanager
async def voice_rig(
    tmp_path: Path, words: str, *, turn_handling: dict[str, Any] | None = None
) -> AsyncIterator[VoiceRig]:
    """A started voice session (as entrypoint wires it) whose microphone says ``words`` after a second of silence.
    The user remembers that their sister lives in Lisbon. Leaving it runs the job's shutdown callback."""
    speech = spoken(words, tmp_path)
    # Outside a LiveKit job, the plugins' shared aiohttp session needs an owner: LiveKit's documented wrapper.
    async with http_context.open():
        with FakeOpenAIServer() as fake:
            fake.transcript = words
            settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/voice.db",  # type: ignore[call-arg]
                                openai_base_url=fake.base_url, retrieval_deadline_ms=2_000)  # fmt: skip
            process = await open_process(settings)
            services = await open_session(process, user_id=uuid.uuid4())
            await services.memories.save_memory("RELATIONSHIP", "sister city", MAYA)
            providers = build_providers(settings, client=process.clients.openai)
            session = build_session(providers, vad=silero.VAD.load(), turn_detection=turn_detection(settings),
                                    turn_handling=turn_handling)  # fmt: skip
            speaker = Speaker()
            session.input.audio = Microphone(speech)
            session.output.audio = speaker
            try:
                agent = await start_companion(session, process=process, services=services)
                yield VoiceRig(fake, process, services, session, speaker, agent)
            finally:
                await finish_companion(process=process, services=services, providers=providers, session=session)


async def test_a_voice_turn_carries_the_memories_and_produces_reply_audio(tmp_path: Path) -> None:
    async with voice_rig(tmp_path, "Where does my sister live?") as rig:
        greeting_audio = rig.speaker.seconds
        await eventually(lambda: bool(rig.replies_asked()), within=30)
        await eventually(lambda: rig.speaker.seconds > greeting_audio + 0.2, within=30)
        await eventually(lambda: rig.session.agent_state == "listening", within=30)  # the reply fully played
        assert rig.fake.transcriptions >= 1
        assert MAYA in str(rig.replies_asked()[0]["messages"])  # the voice turn carried the memory
        assert greeting_audio > 0


async def test_retrieval_runs_in_the_preemptive_generation_before_the_turn_is_over(tmp_path: Path) -> None:
    # A long endpointing delay stands for a turn detector still deciding: the final transcript is in, the turn is not.
    handling = {"endpointing": {"min_delay": 2.5, "max_delay": 4.0}}
    async with voice_rig(tmp_path, "Where does my sister live?", turn_handling=handling) as rig:
        committed: list[float] = []  # when the user's turn was committed to the history
        rig.session.on(
            "conversation_item_added",
            lambda e: committed.append(time.monotonic()) if getattr(e.item, "role", None) == "user" else None,
        )
        await eventually(lambda: bool(rig.replies_asked()), within=30)
        assert committed == []  # the LLM request (with our retrieval before it) went out while the turn was open
        assert MAYA in str(rig.replies_asked()[0]["messages"])
        await eventually(lambda: bool(committed), within=30)
        await eventually(lambda: rig.session.agent_state == "listening", within=30)
        assert len(rig.replies_asked()) == 1  # the preemptive reply was used, not asked for again
        assert rig.services.retrieval.stats.turns == 1


async def test_hanging_up_before_the_turn_ends_still_stores_what_the_user_said(tmp_path: Path) -> None:
    handling = {"endpointing": {"min_delay": 6.0, "max_delay": 8.0}}
    async with voice_rig(tmp_path, "I got the job at the bakery", turn_handling=handling) as rig:
        await eventually(lambda: rig.fake.transcriptions >= 1, within=30)
        user = rig.services.user_id
    stored = await _stored_messages(tmp_path, user)
    assert ("user", "I got the job at the bakery") in stored


async def _stored_messages(tmp_path: Path, user: uuid.UUID) -> list[tuple[str, str]]:
    storage = await SqliteStorage.open(tmp_path / "voice.db")
    try:
        return [(m.role, m.content) for m in await storage.recent_messages(user, limit=20)]
    finally:
        await storage.aclose()
