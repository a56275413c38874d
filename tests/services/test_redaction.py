"""Redaction: which sentences mention a forgotten fact, and what is left of a text without them."""

from __future__ import annotations

import json

from rag_system import analyzer_for
from services.redaction import FORGOTTEN, ForgottenFact, redact, redact_json_strings

EN = analyzer_for("en")
PIN = ForgottenFact.of("bank pin", "Their bank PIN is 4821", analyzer=EN)


def test_a_sentence_with_the_facts_number_or_most_of_its_words_goes_and_the_rest_stays() -> None:
    text = "Dave loves tea. His code is 4821! He went to the bank. He said his bank PIN changed.\nHe bakes."
    assert redact(text, [PIN], analyzer=EN) == "Dave loves tea. He went to the bank. He bakes."
    assert redact(text, [PIN], analyzer=EN, replacement=FORGOTTEN) == (
        f"Dave loves tea. {FORGOTTEN} He went to the bank. {FORGOTTEN} He bakes."
    )


def test_a_phrase_made_only_of_the_facts_words_goes() -> None:
    assert redact("the PIN", [PIN], analyzer=EN) == ""
    assert redact("the bank holiday", [PIN], analyzer=EN) == "the bank holiday"


def test_text_that_mentions_nothing_forgotten_comes_back_the_same() -> None:
    text = "We talked about  tea,\n\nand  the garden."
    assert redact(text, [PIN], analyzer=EN) is text
    assert redact(text, [], analyzer=EN) is text


def test_other_languages_are_read_with_their_own_words() -> None:
    pt = analyzer_for("pt")
    sister = ForgottenFact.of("irmã cidade", "A irmã Maya mora em Lisboa", analyzer=pt)
    text = "A Maya, irmã dela, mora em Lisboa. Gosta de chá."
    assert redact(text, [sister], analyzer=pt) == "Gosta de chá."


def test_tool_arguments_stay_valid_json() -> None:
    arguments = json.dumps({"query": "my PIN 4821", "limit": 1})
    assert json.loads(redact_json_strings(arguments, [PIN], analyzer=EN)) == {"query": FORGOTTEN, "limit": 1}
    assert redact_json_strings('{"query": "tea"}', [PIN], analyzer=EN) == '{"query": "tea"}'
