"""The embeddings' storage: int8 codes choose, the exact vectors in the temporary file decide, so every number and
ranking is the float32 one; what is forgotten leaves the file at once; without a temporary file, float32 in memory."""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from core.errors import IndexFileError
from rag_system import IndexedMemory, MemoryIndex, analyze, analyzer_for, scoring
from rag_system import index as index_module
from rag_system.query import query_vector

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
EN = analyzer_for("en")
DIMENSION = 384
SUMS = (DIMENSION + 1 + 256) * DIMENSION * 8 + 256 * 8  # float64: sum, outer products, rows waiting to be added
WORDS = ("sister", "lisbon", "tea", "knee", "physio", "garden", "tomatoes", "choir", "bristol", "concert", "bus",
         "grandson", "pottery", "allotment", "dentist", "marathon", "cat", "piano", "holiday", "spain")  # fmt: skip


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    return vector / np.float32(np.linalg.norm(vector))


def random_index(rows: int, seed: int, *, duplicates: bool = True) -> tuple[MemoryIndex, np.ndarray]:
    """``rows`` memories of random words, ages and importances; vectors in clusters (and a tenth exact duplicates)
    so that many cosines are close, as a user's are. Returns the index and its unit vectors by row, as stored."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIMENSION))
    index = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    vectors = []
    for row in range(rows):
        if duplicates and row % 10 == 9:
            vector = vectors[int(rng.integers(row))]  # a duplicate: equal cosines, apart only by the priors
        else:
            vector = unit(centres[row % 20] + rng.normal(scale=0.8, size=DIMENSION))
        at = NOW - dt.timedelta(days=float(rng.uniform(0, 700)))
        value = " ".join(rng.choice(WORDS, size=3))
        index.upsert(IndexedMemory("FACT", f"m{row}", value, float(rng.uniform(0.1, 1.0)), at, at), vector)
        vectors.append(vector / float(np.linalg.norm(vector)))  # as the index makes it a unit vector
    return index, np.array(vectors, dtype=np.float32)


def queries(vectors: np.ndarray, count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Questions of a few words, each with a vector near a memory's or anywhere."""
    rng = np.random.default_rng(seed)
    asked = []
    for i in range(count):
        near = vectors[int(rng.integers(len(vectors)))] + rng.normal(scale=0.05 * (i % 4), size=DIMENSION)
        vector = near if i % 5 else rng.normal(size=DIMENSION)
        asked.append((" ".join(rng.choice(WORDS, size=int(rng.integers(1, 4)))), vector.astype(np.float32)))
    return asked


@pytest.fixture
def no_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))


def test_returned_memories_carry_the_float32_numbers() -> None:
    index, vectors = random_index(3_000, seed=1)
    assert index.vectors.quantized
    for text, vector in queries(vectors, 60, seed=2):
        query = analyze(text, now=NOW, analyzer=EN)
        found = index.search(query, vector, now=NOW, k=10)
        q = query_vector(vector, history_weight=0.0)
        semantic = vectors @ q  # what a float32 matrix gives, for every row
        semantic_z = scoring.standardise(semantic)
        for item in found.ranked:
            row = int(item.memory.key[1:])
            parts = item.score
            assert parts.semantic == pytest.approx(float(semantic[row]), abs=1e-6)
            assert parts.semantic_z == pytest.approx(float(semantic_z[row]), abs=1e-5)  # ~1e-7 of z, |z| < 10
            assert parts.relevance == pytest.approx(parts.semantic_z + 6.0 * parts.coverage, abs=1e-6)
        assert found.gate.similarity == pytest.approx(max(float(semantic[int(r.memory.key[1:])]) for r in found.ranked),
                                                      abs=1e-6)  # fmt: skip
        nearest = index.nearest(vector, k=10)  # rows, where duplicates tie, as the scores say
        assert [s for _, s in nearest] == pytest.approx(np.sort(semantic)[::-1][:10].tolist(), abs=1e-6)
        assert [s for _, s in nearest] == pytest.approx([float(semantic[int(m.key[1:])]) for m, _ in nearest], abs=1e-6)


@pytest.mark.parametrize("rescored", [index_module.RESCORED, 1])
def test_rankings_are_those_of_float32_vectors_in_memory(
    rescored: int, no_temp_folder: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same memories in an index without a temporary file (float32 in memory, every cosine exact) answer every
    question the same, score for score; also when the first round rescores the top k alone, and the error bounds
    must find every other row that could be in it."""
    monkeypatch.setattr(index_module, "RESCORED", rescored)
    monkeypatch.setattr(index_module, "RESCORED_PER_RESULT", 1 if rescored == 1 else index_module.RESCORED_PER_RESULT)
    reference, vectors = random_index(3_000, seed=3)
    assert not reference.vectors.quantized
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", None)
        index, _ = random_index(3_000, seed=3)
    assert index.vectors.quantized
    for text, vector in queries(vectors, 100, seed=4):
        query = analyze(text, now=NOW, analyzer=EN)
        for k in (1, 5, 20):
            got, expected = index.search(query, vector, now=NOW, k=k), reference.search(query, vector, now=NOW, k=k)
            assert [r.memory for r in got.ranked] == [r.memory for r in expected.ranked]
            for mine, theirs in zip(got.ranked, expected.ranked, strict=True):
                assert mine.score.total == pytest.approx(theirs.score.total, abs=1e-6)
                assert mine.score.semantic == pytest.approx(theirs.score.semantic, abs=1e-6)
            assert got.gate.inject == expected.gate.inject
            assert got.gate.similarity == pytest.approx(expected.gate.similarity, abs=1e-6)
        nearest, expected_nearest = index.nearest(vector, k=5), reference.nearest(vector, k=5)
        assert [s for _, s in nearest] == pytest.approx([s for _, s in expected_nearest], abs=1e-6)


def file_bytes(index: MemoryIndex) -> bytes:
    fd = index.vectors.fileno()
    assert fd is not None
    return os.pread(fd, os.fstat(fd).st_size + 1, 0)


def test_the_file_has_no_name_is_the_users_alone_and_is_never_mapped() -> None:
    index, _ = random_index(10, seed=5)
    fd = index.vectors.fileno()
    assert fd is not None
    assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    assert os.fstat(fd).st_nlink == 0  # unlinked: gone with the process
    assert len(file_bytes(index)) == 10 * DIMENSION * 4  # the live rows, exact
    target = os.readlink(f"/proc/self/fd/{fd}")
    with open("/proc/self/maps", encoding="utf-8") as maps:
        assert target not in maps.read()


def test_a_forgotten_or_replaced_vector_leaves_the_file_at_once() -> None:
    index, vectors = random_index(50, seed=6, duplicates=False)
    forgotten, replaced, last = vectors[7].tobytes(), vectors[20].tobytes(), vectors[49].tobytes()
    assert forgotten in file_bytes(index)
    assert replaced in file_bytes(index)
    index.remove("FACT", "m7")  # the last row moves into its place
    index.upsert(IndexedMemory("FACT", "m20", "tea", 0.5, NOW, NOW), np.ones(DIMENSION, dtype=np.float32))
    written = file_bytes(index)
    assert forgotten not in written
    assert replaced not in written
    assert written.count(last) == 1  # moved, not copied
    assert len(written) == 49 * DIMENSION * 4
    index.remove("FACT", "m48")  # the last row itself
    assert vectors[48].tobytes() not in file_bytes(index)
    assert len(file_bytes(index)) == 48 * DIMENSION * 4


def test_clear_truncates_the_file() -> None:
    index, vectors = random_index(50, seed=7, duplicates=False)
    index.clear()
    assert file_bytes(index) == b""
    assert index.search(analyze("tea", now=NOW, analyzer=EN), vectors[0], now=NOW).ranked == ()
    index.upsert(IndexedMemory("FACT", "tea", "green tea", 0.5, NOW, NOW), vectors[1])
    assert [m.key for m, _ in index.nearest(vectors[1], k=3)] == ["tea"]
    assert file_bytes(index) == (vectors[1] / float(np.linalg.norm(vectors[1]))).tobytes()


def test_without_a_temporary_file_the_vectors_stay_in_memory_with_a_warning(
    no_temp_folder: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="companion.rag"):
        index = MemoryIndex(dimension=DIMENSION, analyzer=EN)
    assert not index.vectors.quantized
    assert index.vectors.fileno() is None
    assert [r.getMessage() for r in caplog.records] == [
        "embeddings kept in memory as float32: no temporary file (ENOENT)"
    ]
    vector = unit(np.arange(1, DIMENSION + 1))
    index.upsert(IndexedMemory("FACT", "tea", "green tea", 0.5, NOW, NOW), vector)
    index.upsert(IndexedMemory("FACT", "cat", "a black cat", 0.5, NOW, NOW), unit(np.ones(DIMENSION)))
    assert index.vectors.memory_bytes == 64 * DIMENSION * 4 + SUMS
    assert index.nearest(vector, k=1)[0][1] == pytest.approx(1.0, abs=1e-6)
    assert [r.memory.key for r in index.search(analyze("tea", now=NOW, analyzer=EN), vector, now=NOW).ranked] == [
        "tea",
        "cat",
    ]
    index.remove("FACT", "tea")
    index.clear()
    assert len(index) == 0


def test_the_rows_cost_a_quarter_of_float32_in_memory() -> None:
    index, _ = random_index(1_000, seed=8)
    assert index.vectors.memory_bytes == 1_024 * (DIMENSION + 8) + SUMS  # capacity 1,024 after doubling
    assert index.vectors.file_bytes == 1_000 * DIMENSION * 4


def test_every_approximate_cosine_is_within_its_bound_of_the_exact_one() -> None:
    index, vectors = random_index(2_000, seed=9)
    for _, vector in queries(vectors, 50, seed=10):
        q = query_vector(vector, history_weight=0.0)
        approximate, bound = index.vectors.approximate(q)
        error = np.abs(approximate - vectors @ q)
        assert (error <= bound).all()
        assert np.median(error) < 0.001  # what the int8 codes lose: the reason for rescoring, and its size
        assert bound.max() < 0.02


def test_a_full_disk_is_a_typed_error_and_leaves_the_index_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    index, vectors = random_index(50, seed=5)
    before = index.nearest(vectors[7], k=3)

    def full(*_: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(IndexFileError, match="ENOSPC"):
        index.upsert(IndexedMemory("FACT", "new", "a new memory", 0.5, NOW, NOW), vectors[3])
    with pytest.raises(IndexFileError):
        index.upsert(IndexedMemory("FACT", "m7", "replaced", 0.5, NOW, NOW), vectors[3])

    assert len(index) == 50
    assert index.get("FACT", "new") is None
    assert index.get("FACT", "m7").value != "replaced"
    assert index.nearest(vectors[7], k=3) == before
