"""Speech output: the factory, Uplift AI through its real plugin against a local Socket.IO server, the fallback
to OpenAI TTS, and the text clean-up."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from livekit.agents import tts as lk_tts

from core.config import Settings
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.uplift_server import UpliftServer
from tts import SpeechOutput, build_tts, speak_urls_as_links, without_urls

KEY = "uplift-test-key"


@pytest.fixture
async def uplift() -> AsyncIterator[UpliftServer]:
    server = UpliftServer(api_key=KEY)
    await server.start()
    yield server
    await server.aclose()


async def spoken_seconds(speech: SpeechOutput, text: str) -> float:
    seconds = 0.0
    try:
        async with speech.tts.synthesize(text) as stream:
            async for event in stream:
                seconds += event.frame.samples_per_channel / event.frame.sample_rate
    finally:
        await speech.aclose()
    return seconds


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def test_uplift_speaks_through_the_official_plugin(uplift: UpliftServer) -> None:
    speech = build_tts(settings(upliftai_api_key=KEY, upliftai_base_url=uplift.url,
                                upliftai_output_format="PCM_22050_16"))  # fmt: skip
    assert await spoken_seconds(speech, "Hello Ana, welcome back.") > 0.1
    [request] = uplift.requests
    assert (request["voiceId"], request["outputFormat"]) == ("v_meklc281", "PCM_22050_16")


async def test_when_uplift_fails_openai_tts_speaks(uplift: UpliftServer) -> None:
    uplift.fail = True
    with FakeOpenAIServer() as openai_server:
        speech = build_tts(settings(upliftai_api_key=KEY, upliftai_base_url=uplift.url,
                                    upliftai_output_format="PCM_22050_16", openai_base_url=openai_server.base_url))  # fmt: skip
        assert isinstance(speech.tts, lk_tts.FallbackAdapter)
        assert await spoken_seconds(speech, "Hello Ana, welcome back.") > 0.1
        assert uplift.requests  # Uplift was tried first
        assert openai_server.speech_requests


def test_without_uplift_openai_tts_speaks_alone() -> None:
    speech = build_tts(settings(openai_base_url="http://127.0.0.1:9/v1"))
    assert not isinstance(speech.tts, lk_tts.FallbackAdapter)
    assert [type(p).__module__ for p in speech.providers] == ["livekit.plugins.openai.tts"]


def test_urls_are_not_read_out() -> None:
    assert without_urls("See https://example.com/a?b=1 or www.example.org.") == "See a link or a link."


async def test_a_url_split_across_streamed_chunks_is_replaced_whole() -> None:
    async def chunks() -> AsyncIterator[str]:
        for piece in ["Read it at htt", "ps://exam", "ple.com/page now", " please"]:
            yield piece

    assert "".join([c async for c in speak_urls_as_links(chunks())]) == "Read it at a link now please"
