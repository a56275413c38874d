"""The retrieval engine: one user's memories in an in-process index, ranked by meaning and words, with a gate.

Pure Python and numpy: no network or database I/O (only ``vectors``' own temporary file), no LiveKit, no clock of
its own (``now`` is passed in). The modules, in the order a search uses them: ``text`` (the words of a language),
``time_phrases`` (English phrases that name a time), ``query`` (what a turn asks for), ``vectors`` (the embeddings,
int8 in memory and exact in a temporary file), ``scoring`` (the ranking's arithmetic), ``gate`` (whether to inject
anything), ``index`` (the memories and the search).
"""

from rag_system.gate import GateDecision, GateParams
from rag_system.index import IndexedMemory, MemoryIndex, Retrieved, SearchResult
from rag_system.query import Query, analyze
from rag_system.scoring import RankingParams, ScoreParts
from rag_system.text import TextAnalyzer, analyzer_for
from rag_system.time_phrases import TimeWindow, find_window

__all__ = [
    "GateDecision",
    "GateParams",
    "IndexedMemory",
    "MemoryIndex",
    "Query",
    "RankingParams",
    "Retrieved",
    "ScoreParts",
    "SearchResult",
    "TextAnalyzer",
    "TimeWindow",
    "analyze",
    "analyzer_for",
    "find_window",
]
