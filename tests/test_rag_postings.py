"""The postings on their own: after any writes, drops, moves and compactions, every lookup gives what postings
built from scratch from the surviving rows give, as sets of (row, tf)."""

from __future__ import annotations

import random

import numpy as np

from rag_system.postings import DROPPED, MIN_TAIL, Postings

TERMS = [f"t{i}" for i in range(60)]


def posted(postings: Postings, terms: list[str]) -> list[tuple[int, set[tuple[int, float]]]]:
    """Each term's df and its live (row, tf) pairs; a live row must come once."""
    found = []
    for df, rows, tf in postings.lookup(terms):
        assert tf.dtype == np.float32
        pairs = [(int(r), float(f)) for r, f in zip(rows, tf, strict=True) if r != DROPPED]
        assert len(pairs) == len(set(pairs)) == df
        found.append((df, set(pairs)))
    return found


def test_writes_drops_moves_and_compactions_look_up_as_a_rebuild_does() -> None:
    rng = random.Random(11)
    postings = Postings(rows=1, entries=1)
    rows: list[list[str]] = []  # row -> its terms, dense as the index keeps them
    for step in range(1, 6_001):
        if rows and rng.random() < 0.35:
            row = rng.randrange(len(rows))
            postings.drop(row)
            last = len(rows) - 1
            if row != last:
                postings.move(last, row)
            rows[row] = rows[last]
            rows.pop()
        elif rows and rng.random() < 0.3:  # a replace: the row's entries go, new ones come
            row = rng.randrange(len(rows))
            postings.drop(row)
            rows[row] = rng.choices(TERMS, k=rng.randrange(0, 12))
            postings.add(row, rows[row])
        else:
            rows.append(rng.choices(TERMS, k=rng.randrange(0, 12)))
            postings.add(len(rows) - 1, rows[-1])
        if step % 400 == 0:
            if step % 1_200 == 0:
                postings.compact()
            fresh = Postings()
            for row, terms in enumerate(rows):
                fresh.add(row, terms)
            asked = [*rng.sample(TERMS, 8), "never"]
            assert posted(postings, asked) == posted(fresh, asked)
            expected = {(row, float(terms.count(t))) for row, terms in enumerate(rows) for t in terms if t == asked[0]}
            assert posted(postings, asked[:1])[0][1] == expected
            assert [postings.df(t) for t in asked] == [fresh.df(t) for t in asked]
    assert postings._sorted > 4 * MIN_TAIL  # compacted on its own along the way


def test_a_count_is_kept_as_written_and_searched_as_float32() -> None:
    postings = Postings()
    postings.add(0, ["tea"] * 300 + ["cup"])
    postings.compact()
    postings.add(1, ["tea"] * 2)
    [(df, rows, tf)] = postings.lookup(["tea"])
    assert df == 2
    assert sorted(zip(rows.tolist(), tf.tolist(), strict=True)) == [(0, 300.0), (1, 2.0)]
