"""The relevance gate: whether the best memories for a turn should reach the model at all.

Ranking orders; the gate decides whether anything is injected, from two signals that mean the same whatever the
user said before, and a third for time questions:

- ``similarity``: the best memory's cosine similarity to the query. For a sentence embedder, a turn about nothing
  the user ever said ("what's the capital of Australia?") is far from every memory, whatever the user's other
  memories are like; a z-score against them would not say so, because the best of n memories always stands about
  sqrt(2 ln n) deviations out. The threshold belongs to the embedder: 0.27 was chosen for the local MiniLM on the
  development sets (README, "Retrieval").
- ``coverage``: how much of the question's information the best memory holds by its words (see
  :func:`rag_system.scoring.coverage`), for names and rare words, and for languages the embedder does not know.
- a time phrase whose time holds memories ("what did I do last weekend?").

A question close to what the user said but not answered by it ("what's my brother called?" when only a sister is
known) passes: telling such questions apart takes a model that reads the memory against the question, which
neither ranker is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class GateParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    min_similarity: float = Field(default=0.27, ge=-1.0, le=1.0)
    min_coverage: float = Field(default=0.5, ge=0.0, le=1.0)


@dataclass(frozen=True, slots=True)
class GateDecision:
    inject: bool
    reason: str  # a fixed sentence, never user text
    similarity: float = 0.0
    coverage: float = 0.0


def decide(
    *,
    similarity: np.ndarray,
    coverage: np.ndarray,
    top: Sequence[int],
    window: bool,
    in_window: np.ndarray,
    params: GateParams,
) -> GateDecision:
    if not top:
        return GateDecision(inject=False, reason="no memory to rank")
    rows = np.asarray(top)
    best_similarity = float(similarity[rows].max())
    best_coverage = float(coverage[rows].max())
    signals = {"similarity": best_similarity, "coverage": best_coverage}
    if window and bool(in_window[rows[0]]):
        return GateDecision(inject=True, reason="memories from the time the question names", **signals)
    if best_similarity >= params.min_similarity:
        return GateDecision(inject=True, reason="a memory means something close", **signals)
    if best_coverage >= params.min_coverage:
        return GateDecision(inject=True, reason="a memory holds the question's words", **signals)
    return GateDecision(inject=False, reason="no memory stands out", **signals)
