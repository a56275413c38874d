"""Speech output (issue: the voice agent): Uplift AI and OpenAI TTS behind one factory, with fallback and text
clean-up. Until it lands, agent.py uses OpenAI TTS directly."""
