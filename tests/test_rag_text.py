"""Words in the session's language, and the English time phrases, as the retrieval engine reads them."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from rag_system import IndexedMemory, MemoryIndex, analyze, analyzer_for, find_window
from rag_system.time_phrases import without_phrases

SATURDAY = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
MIDNIGHT = SATURDAY.replace(hour=0)


def test_english_terms_are_snowball_stems_without_stop_words() -> None:
    terms = analyzer_for("en").terms("What are my sister's favourite books, and where's she running?")
    assert terms == ["sister", "favourit", "book", "run"]


def test_words_are_unicode_words_kept_whole() -> None:
    en = analyzer_for("en")
    assert en.words("Café in São Paulo, naïve") == ["café", "in", "são", "paulo", "naïve"]
    # Devanagari vowel signs and Urdu letters are parts of words, not separators
    assert analyzer_for("hi").words("मेरी बहन दिल्ली में रहती है") == ["मेरी", "बहन", "दिल्ली", "में", "रहती", "है"]
    assert analyzer_for("ur").words("میری بہن لاہور میں رہتی ہے") == ["میری", "بہن", "لاہور", "میں", "رہتی", "ہے"]


def test_each_language_has_its_own_stop_words_and_stemmer() -> None:
    pt = analyzer_for("pt-BR")
    assert pt.language == "pt"
    assert pt.stemmer is not None
    assert pt.terms("A minha irmã mora em Lisboa") == ["minh", "irmã", "mor", "lisbo"]  # "a", "em": stop words
    assert pt.terms("morando") == ["mor"]
    ur = analyzer_for("ur")
    assert ur.stemmer is None  # Snowball has no Urdu stemmer: words stay as they are
    assert ur.terms("میری بہن لاہور میں رہتی ہے")[-1] == "رہتی"  # "ہے" ("is") is a stop word
    assert analyzer_for("xx").terms("Hello there, Lisbon") == ["hello", "lisbon"]  # unknown: English stop words
    assert not analyzer_for("pt").english
    assert analyzer_for("en-GB").english


@pytest.mark.parametrize(
    ("language", "memories", "question", "expected"),
    [
        (
            "pt",
            [
                ("irma_cidade", "A irmã dela, Maya, mora em Lisboa com o marido"),
                ("cha", "Prefere chá verde a café"),
                ("trabalho", "Trabalha como radiologista num hospital em Bristol"),
                ("cao", "Tem um galgo reformado chamado Bolo"),
                ("pais", "Os pais vivem no Porto"),
            ],
            "a minha irmã ainda mora em Lisboa?",
            "irma_cidade",
        ),
        (
            "ur",
            [
                ("behan_shehar", "ان کی بہن مایا لاہور میں رہتی ہے"),
                ("chai", "وہ سبز چائے پسند کرتی ہیں"),
                ("kaam", "وہ بریڈفورڈ میں بس چلاتے تھے"),
                ("beti", "ان کی بیٹی ثمینہ لیڈز میں رہتی ہے"),
                ("bagh", "ان کا باغیچہ مسجد کے پاس ہے"),
            ],
            "کیا میری بہن ابھی بھی لاہور میں رہتی ہے؟",
            "behan_shehar",
        ),
    ],
)
def test_a_memory_in_another_language_is_found_by_its_words(language, memories, question, expected) -> None:
    # An embedder that does not know the language: every memory equally far from the question. Words must do it.
    memory_vector, question_vector = np.eye(8, dtype=np.float32)[:2]
    index = MemoryIndex(dimension=8, analyzer=analyzer_for(language))
    for key, value in memories:
        index.upsert(IndexedMemory("RELATIONSHIP", key, value, 0.7, SATURDAY, SATURDAY), memory_vector)
    found = index.search(analyze(question, now=SATURDAY, analyzer=index.analyzer), question_vector, now=SATURDAY)
    first, second, *_ = found.ranked
    assert first.memory.key == expected
    assert first.score.semantic_z == second.score.semantic_z == 0.0  # meaning told them apart not at all
    assert first.score.coverage > 2 * second.score.coverage


# Time phrases (English) ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("what did I do yesterday", MIDNIGHT - DAY, MIDNIGHT),
        ("anything this morning?", MIDNIGHT, MIDNIGHT + DAY),
        ("what did I get up to last weekend", MIDNIGHT - 7 * DAY, MIDNIGHT - 5 * DAY),  # Sat 14 - Mon 16
        ("how was this week", MIDNIGHT - 5 * DAY, MIDNIGHT + DAY),  # since Monday
        ("what happened at work last week", MIDNIGHT - 12 * DAY, MIDNIGHT - 5 * DAY),  # Mon 9 - Mon 16
        ("what did I say on Tuesday", MIDNIGHT - 4 * DAY, MIDNIGHT - 3 * DAY),
        ("what was I stressing about a couple of weeks back", MIDNIGHT - 17.5 * DAY, MIDNIGHT - 9.5 * DAY),
        ("in the past few days", MIDNIGHT - 3 * DAY, MIDNIGHT + DAY),
        ("what did I do last month", dt.datetime(2026, 10, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, tzinfo=dt.UTC)),
        ("back in March", dt.datetime(2026, 3, 1, tzinfo=dt.UTC), dt.datetime(2026, 4, 1, tzinfo=dt.UTC)),
        ("in December 2025", dt.datetime(2025, 12, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
        ("on 8 May, 2023", dt.datetime(2023, 5, 8, tzinfo=dt.UTC), dt.datetime(2023, 5, 9, tzinfo=dt.UTC)),
    ],
)
def test_a_time_phrase_names_its_span(text: str, start: dt.datetime, end: dt.datetime) -> None:
    window = find_window(text, now=SATURDAY)
    assert window is not None
    assert (window.start, window.end) == (start, end)


@pytest.mark.parametrize(
    "text",
    [
        "where does my sister live",
        "what am I doing next week",
        "is my swim on Thursday",  # a schedule, not a day in the past
        "my appointment is on the 14th of May",  # a date without a year is the event's, not when it was said
    ],
)
def test_no_span_without_a_past_time_phrase(text: str) -> None:
    assert find_window(text, now=SATURDAY) is None


def test_this_weekend_is_the_coming_one_midweek_and_the_current_one_at_the_weekend() -> None:
    wednesday = SATURDAY - 3 * DAY
    assert find_window("what am I doing this weekend", now=wednesday) is None
    window = find_window("what did I do this weekend", now=SATURDAY)
    assert window is not None
    assert window.start == MIDNIGHT


def test_the_topic_is_what_is_left_without_the_time_phrase() -> None:
    text = "hmm what did Callum get up to last week"
    window = find_window(text, now=SATURDAY)
    assert window is not None
    assert without_phrases(text, window) == "hmm what did Callum get up to"
    query = analyze(text, now=SATURDAY, analyzer=analyzer_for("en"))
    assert query.topic == "hmm what did Callum get up to"
    assert "week" not in query.terms
    assert analyze(text, now=SATURDAY, analyzer=analyzer_for("pt")).window is None  # English only
