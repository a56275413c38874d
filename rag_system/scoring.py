"""The ranking, as pure functions over arrays: one entry per memory of the user.

Two rankers see every memory: meaning (cosine similarity of the embeddings) and words (Okapi BM25 over the
analyzer's terms). Their raw scores mean different things from one query and one user to the next, so each is
put on a scale that does not::

    semantic_z = (cos(q, m) - mean over the user's memories) / their standard deviation
    coverage   = BM25(q, m) / BM25 of a memory of average length holding every query term once
    relevance  = semantic_z + lexical_weight * coverage
    total      = relevance + window_boost * in_window + recency_weight * recency + importance_weight * importance

``semantic_z`` says how far this memory's meaning stands out from what this user usually says; ``coverage`` how
much of the question's information (its terms, weighted by idf; a term no memory holds counts at the highest idf)
the memory holds, from 0 to about 1. A memory holding every word of the question gains ``lexical_weight``
standard deviations.

``in_window`` is 1 for a memory learned in the span a time phrase names ("last weekend"), else 0. ``recency`` is
``0.5 ** (age / half_life)`` and ``importance`` the memory's own, both in [0, 1]. The two priors together weigh at
most a quarter of a standard deviation of relevance (:class:`RankingParams` enforces it), so they only order
memories that are about equally relevant; they never outvote it.

No clock, no I/O; ``tests/test_rag_scoring.py`` shows the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

BM25_K1 = 1.2  # Okapi BM25's usual constants (Robertson and Zaragoza): term frequency saturation
BM25_B = 0.75  # and length normalisation


class RankingParams(BaseModel):
    """How the parts of a memory's score are weighed. The defaults and why they are what they are: README,
    "Retrieval"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lexical_weight: float = Field(default=6.0, ge=0.0, le=20.0)  # standard deviations for full coverage
    window_boost: float = Field(default=8.0, ge=0.0, le=20.0)  # standard deviations
    recency_weight: float = Field(default=0.1, ge=0.0, le=0.25)
    importance_weight: float = Field(default=0.1, ge=0.0, le=0.25)
    half_life_days: float = Field(default=90.0, gt=0.0, le=3650.0)
    history_weight: float = Field(default=0.6, ge=0.0, le=2.0)  # earlier turns, when the turn points back
    history_term_weight: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _priors_stay_small(self) -> RankingParams:
        if self.recency_weight + self.importance_weight > 0.25:
            raise ValueError("recency_weight + importance_weight must be at most 0.25: priors never outvote relevance")
        return self


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """One memory's score, part by part: the cosine similarity and its z-score against the user's memories, the
    BM25 score and its coverage of the query."""

    semantic: float
    semantic_z: float
    lexical: float
    coverage: float
    relevance: float
    in_window: bool
    recency: float
    importance: float
    total: float
    params: RankingParams

    def explain(self) -> str:
        p = self.params
        return (
            f"{self.semantic_z:+.2f} meaning (cos {self.semantic:.2f})"
            f" + {p.lexical_weight:.2f}*{self.coverage:.2f} words (bm25 {self.lexical:.2f})"
            f" + {p.window_boost if self.in_window else 0:.2f} time window"
            f" + {p.recency_weight:.2f}*{self.recency:.2f} recency"
            f" + {p.importance_weight:.2f}*{self.importance:.2f} importance = {self.total:.3f}"
        )


def bm25(tf: np.ndarray, length: np.ndarray, *, average_length: float, df: int, n: int) -> np.ndarray:
    """Okapi BM25 of one term in the memories that hold it ``tf`` times; idf = ln(1 + (n - df + 0.5)/(df + 0.5))."""
    norm = BM25_K1 * (1.0 - BM25_B + BM25_B * length / max(average_length, 1e-9))
    return idf(df, n) * tf * (BM25_K1 + 1.0) / (tf + norm)


def standardise(scores: np.ndarray, *, mean: float | None = None, deviation: float | None = None) -> np.ndarray:
    """z-scores against a population's mean and standard deviation, by default these scores' own; all zeros when
    they do not vary. (The index passes its rows' exact statistics and scores some rows only approximately.)"""
    deviation = float(scores.std()) if deviation is None else deviation
    if deviation <= 1e-12:
        return np.zeros_like(scores, dtype=np.float32)
    mean = float(scores.mean()) if mean is None else mean
    return ((scores - mean) / deviation).astype(np.float32)


def recency(age_days: np.ndarray, *, half_life_days: float) -> np.ndarray:
    """0.5 ** (age / half-life): 1 now, 0.5 one half-life ago. Future times count as now."""
    return np.power(0.5, np.maximum(age_days, 0.0) / half_life_days)


def idf(df: int, n: int) -> float:
    return float(np.log1p((n - df + 0.5) / (df + 0.5)))


def coverage(lexical: np.ndarray, *, ideal: float) -> np.ndarray:
    """BM25 over ``ideal``, the score of a memory of average length holding each query term once: a memory's
    share of the question's information (BM25's saturation lets a term repeated many times pass 1 slightly)."""
    return (lexical / ideal).astype(np.float32) if ideal > 0 else np.zeros_like(lexical, dtype=np.float32)


def relevance(semantic_z: np.ndarray, coverage_part: np.ndarray, *, lexical_weight: float) -> np.ndarray:
    return semantic_z + lexical_weight * coverage_part


def total(
    relevance_part: np.ndarray,
    *,
    in_window: np.ndarray,
    recency_part: np.ndarray,
    importance: np.ndarray,
    params: RankingParams,
) -> np.ndarray:
    return (
        relevance_part
        + params.window_boost * in_window
        + params.recency_weight * recency_part
        + params.importance_weight * importance
    )
