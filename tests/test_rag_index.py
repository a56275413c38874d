"""The compact index's structure: writes, removals and compaction answer as an index built from scratch would."""

from __future__ import annotations

import datetime as dt
import gc
import random
import zoneinfo

import numpy as np

from rag_system import IndexedMemory, MemoryIndex, analyze, analyzer_for
from rag_system.postings import MIN_TAIL

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
EN = analyzer_for("en")
DIMENSION = 8
WORDS = ("sister", "lisbon", "tea", "knee", "physio", "garden", "tomatoes", "choir", "bristol", "concert", "bus",
         "grandson", "pottery", "allotment", "dentist", "marathon", "cat", "piano", "holiday", "spain")  # fmt: skip


def memory(key: str, value: str, *, category: str = "FACT", importance: float = 0.5, age: float = 30) -> IndexedMemory:
    at = NOW - dt.timedelta(days=age)
    return IndexedMemory(category, key, value, importance, at, at)


def vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIMENSION).astype(np.float32)


def answers(index: MemoryIndex, text: str, seed: int) -> list:
    """Everything the index says about one question: the ranking with every score part, the gate, both rankers."""
    query = analyze(text, now=NOW, analyzer=EN)
    found = index.search(query, vector(seed), now=NOW, k=10)
    n = len(index)
    return [
        [(r.memory, r.score) for r in found.ranked],
        found.gate,
        index.bm25(query.terms, k=n),
        index.nearest(vector(seed), k=n),
    ]


def rebuilt(index: MemoryIndex, vectors: dict[tuple[str, str], np.ndarray]) -> MemoryIndex:
    """A fresh index of the same memories, written once each in the same row order."""
    fresh = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    for item in index.memories():
        fresh.upsert(item, vectors[(item.category, item.key)])
    return fresh


def test_an_upsert_of_the_same_category_and_key_replaces_the_memory() -> None:
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    index.upsert(memory("sister_city", "Maya lives in Lisbon", importance=0.7), vector(1))
    index.upsert(memory("car", "drives a blue car"), vector(2))
    index.upsert(memory("sister_city", "Maya moved to Porto", importance=0.9, age=1), vector(3))
    assert len(index) == 2
    assert index.get("FACT", "sister_city") == memory("sister_city", "Maya moved to Porto", importance=0.9, age=1)
    assert index.bm25(EN.terms("Lisbon"), k=5) == []  # the old value's words are gone
    assert [m.key for m, _ in index.bm25(EN.terms("Porto"), k=5)] == ["sister_city"]
    assert [m.key for m, _ in index.nearest(vector(3), k=1)] == ["sister_city"]


def test_a_removed_memory_leaves_every_ranker_and_the_last_row_takes_its_place() -> None:
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    for i, word in enumerate(("alpha", "bravo", "charlie")):
        index.upsert(memory(word, f"{word} words"), vector(i))
    assert index.remove("FACT", "alpha")
    assert not index.remove("FACT", "alpha")
    assert ("FACT", "alpha") not in index
    assert index.get("FACT", "alpha") is None
    assert [m.key for m in index.memories()] == ["charlie", "bravo"]  # charlie moved into row 0
    assert index.bm25(EN.terms("alpha"), k=5) == []
    assert [m.key for m, _ in index.bm25(EN.terms("charlie"), k=5)] == ["charlie"]
    assert [m.key for m, _ in index.nearest(vector(2), k=1)] == ["charlie"]
    assert [m.key for m, _ in index.bm25(EN.terms("words"), k=5)] == ["charlie", "bravo"]


def test_a_memory_comes_back_exactly_as_it_was_written() -> None:
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    written = [
        IndexedMemory("FACT", "city", "Lives in Lisbon", 0.7, dt.datetime(2025, 3, 2, 18, 20, 1, 123456, tzinfo=dt.UTC),
                      dt.datetime(2026, 11, 20, 9, 0, 0, 999999, tzinfo=dt.UTC)),
        IndexedMemory("HOBBY", "urdu_poetry", "اسے غالب کی شاعری پسند ہے 📚", 1 / 3,
                      dt.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=zoneinfo.ZoneInfo("Asia/Karachi")),
                      dt.datetime(2026, 7, 1, 23, 59, 59, 500000, tzinfo=dt.timezone(dt.timedelta(hours=-3)))),
    ]  # fmt: skip
    for i, item in enumerate(written):
        index.upsert(item, vector(i))
    assert index.memories() == written
    for item in written:
        got = index.get(item.category, item.key)
        assert got == item
        assert got is not None
        assert (got.created_at.utcoffset(), got.updated_at.utcoffset()) == (
            item.created_at.utcoffset(),
            item.updated_at.utcoffset(),
        )
        assert got.importance == item.importance  # not rounded to float32


def test_compaction_changes_no_answer() -> None:
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    for i in range(60):
        index.upsert(memory(f"m{i}", f"{WORDS[i % 20]} and {WORDS[(i * 7) % 20]}", age=i), vector(i))
    for i in range(0, 60, 3):
        index.remove("FACT", f"m{i}")
    for i in range(1, 60, 4):
        index.upsert(memory(f"m{i}", f"now {WORDS[(i * 3) % 20]}", age=i / 2), vector(100 + i))
    questions = [f"what about the {WORDS[i]} and {WORDS[(i + 5) % 20]}?" for i in range(20)]
    before = [answers(index, question, i) for i, question in enumerate(questions)]
    index.compact()
    assert [answers(index, question, i) for i, question in enumerate(questions)] == before


def test_interleaved_upserts_and_removes_answer_as_a_rebuild_does() -> None:
    """Property: after any sequence of writes, the index holds exactly the surviving memories and answers every
    question, bit for bit, as an index built from scratch from them in the same row order. Enough writes that the
    postings compact on their own several times."""
    rng = random.Random(20261121)
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN, capacity=1)
    expected: dict[tuple[str, str], IndexedMemory] = {}
    vectors: dict[tuple[str, str], np.ndarray] = {}
    written_terms = 0
    for step in range(1, 3_001):
        category, key = rng.choice(("FACT", "EVENT", "RELATIONSHIP")), f"k{rng.randrange(400)}"
        if rng.random() < 0.3:
            assert index.remove(category, key) == ((category, key) in expected)
            expected.pop((category, key), None)
        else:
            value = " ".join(rng.choices(WORDS, k=rng.randrange(1, 9)))
            item = memory(key, value, category=category, importance=rng.random(), age=rng.uniform(0, 700))
            seed = rng.randrange(1 << 30) if rng.random() < 0.9 else 0  # some share a vector: ties
            index.upsert(item, vector(seed))
            expected[(category, key)], vectors[(category, key)] = item, vector(seed)
            written_terms += len(EN.terms(value)) + 1
        if step % 500 == 0:
            assert sorted(index.memories(), key=repr) == sorted(expected.values(), key=repr)
            fresh = rebuilt(index, vectors)
            for i in range(8):
                question = " ".join(rng.choices(WORDS, k=3))
                assert answers(index, question, i) == answers(fresh, question, i)
    assert written_terms > 5 * MIN_TAIL


def test_versions_and_key_hashes_follow_their_memories_through_replaces_and_removals() -> None:
    rng = random.Random(5)
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN, capacity=1)
    expected: dict[tuple[str, str], tuple[int, int]] = {}  # identity -> (version, key_hash)
    for step in range(600):
        ident = (rng.choice(("FACT", "EVENT")), f"k{rng.randrange(60)}")
        if rng.random() < 0.3:
            index.remove(*ident)
            expected.pop(ident, None)
        else:
            version, key_hash = rng.randrange(-1, 50), rng.choice((rng.getrandbits(64), 2**64 - 1, 0))
            index.upsert(memory(ident[1], "tea", category=ident[0]), vector(step), version=version, key_hash=key_hash)
            expected[ident] = (version, key_hash)
    for ident, (version, _) in expected.items():
        assert index.version_of(*ident) == version
    assert index.version_of("FACT", "never") is None
    hashes = [h for _, h in rng.sample(sorted(expected.values()), 10)] + [12345]
    assert sorted(index.with_key_hashes(hashes)) == sorted(i for i, (_, h) in expected.items() if h in hashes)
    assert sorted(index.with_versions(above=-1, up_to=20)) == sorted(
        i for i, (v, _) in expected.items() if -1 < v <= 20
    )


def test_the_index_gives_the_garbage_collector_nothing_to_walk_per_memory() -> None:
    texts = [(f"m{i}", f"{WORDS[i % 20]} {WORDS[(i * 3) % 20]} number {i}") for i in range(2_000)]
    for key, value in texts:  # PyStemmer caches each word it stems in a list of its own (10,000 at most)
        EN.terms(f"{key} {value}")
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    gc.collect()
    tracked = len(gc.get_objects())
    for i, (key, value) in enumerate(texts):
        index.upsert(memory(key, value), vector(i))
    gc.collect()
    assert len(gc.get_objects()) - tracked < 20  # a per-memory object would add 2,000


def test_clear_forgets_everything() -> None:
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    index.upsert(memory("tea", "prefers green tea"), vector(1))
    index.clear()
    assert len(index) == 0
    assert index.memories() == []
    assert index.bm25(EN.terms("tea"), k=5) == []
    assert index.search(analyze("tea", now=NOW, analyzer=EN), vector(1), now=NOW).ranked == ()


def test_newest_first_makes_only_what_it_returns_in_the_order_a_sort_by_update_time_gives() -> None:
    rng = random.Random(7)
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    for i in range(300):
        category = rng.choice(("FACT", "EVENT", "GOAL"))
        index.upsert(memory(f"m{rng.randrange(200)}", "words", category=category, age=rng.randrange(20)), vector(i))
    everything = index.memories()
    by_time = sorted(everything, key=lambda m: m.updated_at, reverse=True)  # stable: equal times keep row order
    assert index.newest() == by_time
    assert index.newest(10) == by_time[:10]
    assert index.newest(5, category="EVENT") == [m for m in by_time if m.category == "EVENT"][:5]
    assert index.newest(category="HOBBY") == []


def test_the_most_important_come_in_the_order_a_sort_by_importance_then_time_gives() -> None:
    rng = random.Random(11)
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    for i in range(300):
        item = memory(f"m{rng.randrange(200)}", "words", importance=rng.choice((0.3, 0.5, 0.7)), age=rng.randrange(9))
        index.upsert(item, vector(i))
    expected = sorted(index.memories(), key=lambda m: (m.importance, m.updated_at), reverse=True)
    assert index.most_important(10) == expected[:10]
    assert index.most_important(1_000) == expected
    assert index.most_important(0) == []


def test_categories_are_counted_in_the_order_they_first_appear() -> None:
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    for i, category in enumerate(("GOAL", "FACT", "GOAL", "EVENT", "FACT", "GOAL")):
        index.upsert(memory(f"m{i}", "words", category=category), vector(i))
    assert index.count_by_category() == {"GOAL": 3, "FACT": 2, "EVENT": 1}
    assert list(index.count_by_category()) == ["GOAL", "FACT", "EVENT"]
    index.remove("GOAL", "m0")  # m5 (GOAL) moves into row 0
    assert list(index.count_by_category().items()) == [("GOAL", 2), ("FACT", 2), ("EVENT", 1)]
    assert MemoryIndex(dimension=DIMENSION, analyzer=EN).count_by_category() == {}
