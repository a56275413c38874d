"""Redaction: the sentences of a text that mention a forgotten fact, taken out. Pure, explainable, no LLM.

Forgetting a memory must also take it out of every text that could bring it back into a prompt: the written
profile, conversation summaries and open threads, stored messages, the live session's chat. An LLM rewrite could
miss or rephrase it; this rule is checkable. A sentence mentions a fact when it holds any of the fact's numbers
(a PIN, a date, an address), at least ``min_coverage`` of its terms, or nothing but its terms ("the PIN") (terms
are the engine's own: stop words out, stems in, in the user's language). It over-redacts a little rather than keep
a forgotten thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag_system import TextAnalyzer

# A sentence ends at . ! ? (or their CJK and Urdu/Arabic forms) followed by space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？؟۔])\s+|\n+")
MIN_COVERAGE = 0.5


@dataclass(frozen=True, slots=True)
class ForgottenFact:
    """What identifies a forgotten memory in other text: its terms, and those of them that hold a digit."""

    terms: frozenset[str]
    numbers: frozenset[str]

    @classmethod
    def of(cls, key: str, value: str, *, analyzer: TextAnalyzer) -> ForgottenFact:
        terms = frozenset(analyzer.terms(f"{key.replace('_', ' ')} {value}"))
        return cls(terms=terms, numbers=frozenset(t for t in terms if any(c.isdigit() for c in t)))

    def mentioned_in(self, sentence_terms: set[str], *, min_coverage: float = MIN_COVERAGE) -> bool:
        if not self.terms:
            return False
        if self.numbers & sentence_terms or (sentence_terms and sentence_terms <= self.terms):
            return True
        return len(self.terms & sentence_terms) >= min_coverage * len(self.terms)


def redact(text: str, facts: Sequence[ForgottenFact], *, analyzer: TextAnalyzer, replacement: str = "") -> str:
    """``text`` with each sentence that mentions one of ``facts`` replaced by ``replacement`` (dropped when empty).
    The same string back when nothing mentions them."""
    if not facts or not text:
        return text
    sentences = [s for s in _SENTENCE_END.split(text) if s]
    kept, changed = [], False
    for sentence in sentences:
        terms = set(analyzer.terms(sentence))
        if any(fact.mentioned_in(terms) for fact in facts):
            changed = True
            if replacement and (not kept or kept[-1] != replacement):
                kept.append(replacement)
        else:
            kept.append(sentence)
    return " ".join(kept) if changed else text


def redact_json_strings(arguments: str, facts: Sequence[ForgottenFact], *, analyzer: TextAnalyzer) -> str:
    """A tool call's JSON arguments with every string value redacted; still valid JSON."""
    if not facts:  # every LLM request passes here: nothing forgotten, nothing parsed
        return arguments
    try:
        value = json.loads(arguments)
    except ValueError:
        return redact(arguments, facts, analyzer=analyzer, replacement=FORGOTTEN)

    def walk(node: object) -> object:
        if isinstance(node, str):
            return redact(node, facts, analyzer=analyzer, replacement=FORGOTTEN)
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        return node

    redacted = walk(value)
    return arguments if redacted == value else json.dumps(redacted, ensure_ascii=False)


FORGOTTEN = "[forgotten]"
