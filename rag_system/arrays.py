"""The one array helper the index's columns share: every column grows (and postings shrink) the same way."""

from __future__ import annotations

import numpy as np


def fitted(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` in a new buffer of ``size`` rows (other dimensions kept): cut, or padded with zeros."""
    out = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
    out[: min(size, array.shape[0])] = array[:size]
    return out
