"""What a turn asks for: its topic, its terms, the time it names, and whether it points back to earlier turns.

"what did I get up to last weekend?" has the window of last weekend and the topic "what did I get up to"; "where
does she live again?" after talk of a sister points back, so the earlier turns' words count too (at a lower
weight) and their meaning is mixed into the query vector (:func:`query_vector`). English only: time phrases and
the words that point back ("she", "it", "that"...); in another language the turn is taken as it is.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rag_system.text import TextAnalyzer
from rag_system.time_phrases import TimeWindow, find_window, without_phrases

# Third-person and demonstrative pronouns and "there": a turn that uses one refers to something said before.
_POINTS_BACK = re.compile(r"\b(?:it|its|it's|she|she's|he|he's|her|hers|him|his|they|they're|them|their|that|those"
                          r"|there|this|these)\b")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Query:
    text: str  # the turn as said
    topic: str  # the turn without its time phrases: what is embedded and matched by words
    terms: dict[str, float]  # index term -> weight: 1 for the turn's own, less for earlier turns'
    window: TimeWindow | None = None
    history: tuple[str, ...] = field(default=())  # earlier turns, when the turn points back to them

    @property
    def points_back(self) -> bool:
        return bool(self.history)


def analyze(
    text: str,
    recent_turns: Sequence[str] = (),
    *,
    now: dt.datetime,
    analyzer: TextAnalyzer,
    history_term_weight: float = 0.5,
) -> Query:
    window = find_window(text, now=now) if analyzer.english else None
    topic = without_phrases(text, window) if window is not None else text
    earlier = tuple(t for t in recent_turns if t.strip())
    history = earlier if earlier and analyzer.english and _POINTS_BACK.search(text.lower()) else ()
    terms: dict[str, float] = {}
    if history_term_weight > 0:
        for turn in history:
            for term in analyzer.terms(turn):
                terms[term] = history_term_weight
    for term in analyzer.terms(topic):
        terms[term] = 1.0
    return Query(text=text, topic=topic or text, terms=terms, window=window, history=history)


def query_vector(topic: np.ndarray, history: Sequence[np.ndarray] = (), *, history_weight: float) -> np.ndarray:
    """The topic's unit vector, plus ``history_weight`` times the mean direction of the earlier turns, as a unit
    vector: "where does she live?" moves toward what was said about her."""
    vector = _unit(np.asarray(topic, dtype=np.float32))
    if len(history) and history_weight > 0:
        vector = _unit(vector + history_weight * _unit(np.mean([_unit(h) for h in history], axis=0)))
    return vector


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector
