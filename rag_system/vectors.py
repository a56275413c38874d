"""One user's unit embeddings, one row a memory: int8 codes in memory, the exact float32 vectors in a file.

A float32 row of 384 dimensions is 1,536 bytes: 154 MB for 100,000 memories. Here a row is an int8 code per
dimension and two float32s, 392 bytes: 39 MB. The code is symmetric, ``code = round(x / scale)`` with ``scale =
max|x| / 127``; cosines from it are off by 0.00025 (median; 0.0018 at most, bench/data's memories and questions),
which is enough to carry a memory across the gate's threshold or past a near-equal neighbour (an int8 index alone
lost a question of companion_v4), so the codes only choose the rows worth scoring exactly. The exact vectors are
in an unlinked temporary file (no name, mode 0600, gone with the process), written with ``pwrite`` and read back
with ``pread`` for those rows alone, never mapped, so they cost the page cache and not the process: Qdrant's
scalar quantization with rescoring.

The second float32 is the norm of what the code leaves out, ``|x - scale * code|`` (0.007 typically): by
Cauchy-Schwarz, the row's approximate cosine with a unit query is within that of the exact one, so a caller can
tell which rows cannot reach its top k whatever their exact score (:meth:`rag_system.index.MemoryIndex.search`)
and the shortcut changes no result.

The ranking's z-scores need the mean and standard deviation of every row's exact cosine. They come from the sum of
the vectors and the sum of their outer products (float64, 1.2 MB), kept as rows come and go: mean = s.q / n, mean
square = q'Gq / n. Updating the 384 x 384 sum costs a row 0.15 Mflop, so rows wait in blocks.

A replaced or removed vector is overwritten in the file at once, and the file holds the live rows only; ``clear``
truncates it: what a user had forgotten does not linger. Without a temporary file (a read-only temp folder) the
exact vectors stay in memory as float32, with a warning.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import tempfile
import weakref

import numpy as np

from core.errors import IndexFileError
from rag_system.arrays import fitted

logger = logging.getLogger("companion.rag")

BLOCK = 2048  # rows dequantized at a time: 3 MB of float32, as fast as one float32 product over all rows
PENDING = 256  # rows whose outer products wait to be added to the sums together, in one matrix product
# Float32 rounding of the two dot products (about 384 * 2**-24 each, for unit vectors): added to every bound.
ROUNDING = 1e-4
FLAT = 1e-12  # a variance this small against the mean square is rounding: the cosines do not vary


class QuantizedVectors:
    """Unit vectors by row, rows dense from 0: ``put`` at the next row appends, ``remove`` moves the last row into
    the removed one's place. Not thread-safe."""

    def __init__(self, dimension: int, *, capacity: int = 64) -> None:
        self.dimension = dimension
        self._count = 0
        self._row_bytes = dimension * 4
        self._fd: int | None = None
        try:
            file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 (closed by the finalizer below)
        except OSError as error:
            logger.warning("embeddings kept in memory as float32: no temporary file (%s)",
                           errno.errorcode.get(error.errno or 0, type(error).__name__))  # fmt: skip
            self._exact = np.zeros((capacity, dimension), dtype=np.float32)
        else:
            self._fd = file.fileno()
            weakref.finalize(self, file.close)
            self._exact = np.zeros((0, dimension), dtype=np.float32)
        quantized = self._fd is not None
        self._codes = np.zeros((capacity if quantized else 0, dimension), dtype=np.int8)
        self._scale = np.zeros(capacity if quantized else 0, dtype=np.float32)
        self._slack = np.zeros(capacity if quantized else 0, dtype=np.float32)  # |x - scale * code|
        self._sum = np.zeros(dimension, dtype=np.float64)
        self._gram = np.zeros((dimension, dimension), dtype=np.float64)
        self._pending = np.zeros((PENDING, dimension), dtype=np.float64)
        self._signs = np.zeros(PENDING, dtype=np.float64)
        self._waiting = 0

    def __len__(self) -> int:
        return self._count

    @property
    def quantized(self) -> bool:
        """Whether the exact vectors are in the file (else in memory, as float32)."""
        return self._fd is not None

    def fileno(self) -> int | None:
        """The temporary file's descriptor (None without one)."""
        return self._fd

    @property
    def memory_bytes(self) -> int:
        """What the vectors cost in memory: the codes and their two floats (or the float32 rows without a file),
        and the sums for the statistics."""
        rows = self._codes.nbytes + self._scale.nbytes + self._slack.nbytes + self._exact.nbytes
        return rows + self._sum.nbytes + self._gram.nbytes + self._pending.nbytes + self._signs.nbytes

    @property
    def file_bytes(self) -> int:
        return 0 if self._fd is None else os.fstat(self._fd).st_size

    def reserve(self, capacity: int) -> None:
        if capacity <= max(self._codes.shape[0], self._exact.shape[0]):
            return
        if self._fd is None:
            self._exact = fitted(self._exact, capacity)
        else:
            self._codes = fitted(self._codes, capacity)
            self._scale = fitted(self._scale, capacity)
            self._slack = fitted(self._slack, capacity)

    def put(self, row: int, unit: np.ndarray) -> None:
        """Write the unit vector at ``row``: a live row (overwriting its vector at once) or the next one."""
        if not 0 <= row <= self._count:
            raise IndexError("rows are dense: put a live row or the next one")
        vector = np.ascontiguousarray(unit, dtype=np.float32)
        old = self._read(row, 1)[0] if row < self._count else None
        if self._fd is None:
            self._exact[row] = vector
        else:
            self._write(row, vector)
            self._quantize(row, vector)
        if old is not None:
            self._account(old, -1.0)
        self._account(vector, 1.0)
        self._count = max(self._count, row + 1)

    def remove(self, row: int) -> None:
        """Forget ``row``'s vector: the last row's moves into its place, and the file keeps the live rows only."""
        if not 0 <= row < self._count:
            raise IndexError("no such row")
        last = self._count - 1
        gone = self._read(row, 1)[0]
        if self._fd is None:
            self._exact[row] = self._exact[last]
            self._exact[last] = 0
        else:
            if last != row:
                moved = self._read(last, 1)[0]
                self._write(row, moved)
                self._codes[row], self._scale[row], self._slack[row] = (
                    self._codes[last], self._scale[last], self._slack[last])  # fmt: skip
            self._truncate(last)
            self._codes[last], self._scale[last], self._slack[last] = 0, 0, 0
        self._account(gone, -1.0)
        self._count = last

    def clear(self, *, capacity: int = 64) -> None:
        """Forget every vector: the file is truncated to nothing, and the rows start again at ``capacity``."""
        if self._fd is None:
            self._exact = np.zeros((capacity, self.dimension), dtype=np.float32)
        else:
            self._truncate(0)
            self._codes = np.zeros((capacity, self.dimension), dtype=np.int8)
            self._scale = np.zeros(capacity, dtype=np.float32)
            self._slack = np.zeros(capacity, dtype=np.float32)
        self._count = 0
        self._sum[:] = 0
        self._gram[:] = 0
        self._waiting = 0

    # Search ------------------------------------------------------------------------------------------------

    def approximate(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every row's cosine with the query from its code, and how far each may be from the exact one (zeros
        when the rows are exact)."""
        n = self._count
        query = np.asarray(query, dtype=np.float32)
        if self._fd is None:
            return self._exact[:n] @ query, np.zeros(n, dtype=np.float32)
        scores = np.empty(n, dtype=np.float32)
        block = np.empty((min(n, BLOCK), self.dimension), dtype=np.float32)
        for start in range(0, n, BLOCK):
            size = min(BLOCK, n - start)
            np.copyto(block[:size], self._codes[start : start + size])
            np.matmul(block[:size], query, out=scores[start : start + size])
        scores *= self._scale[:n]
        bound = self._slack[:n] * np.float32(np.linalg.norm(query)) + np.float32(ROUNDING)
        return scores, bound

    def exact(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """The given rows' exact cosines with the query, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        query = np.asarray(query, dtype=np.float32)
        if self._fd is None:
            return self._exact[rows] @ query
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        vectors = np.empty((rows.shape[0], self.dimension), dtype=np.float32)
        # Runs of adjacent rows are read at once.
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for start, end in zip([0, *breaks.tolist()], [*breaks.tolist(), rows.shape[0]], strict=True):
            vectors[start:end] = self._read(int(ordered[start]), end - start)
        scores = np.empty(rows.shape[0], dtype=np.float32)
        scores[order] = vectors @ query
        return scores

    def statistics(self, query: np.ndarray) -> tuple[float, float]:
        """The mean and standard deviation of every row's exact cosine with the query (0 when they do not
        vary)."""
        n = self._count
        if n == 0:
            return 0.0, 0.0
        self.settle()
        q = np.asarray(query, dtype=np.float64)
        mean = float(self._sum @ q) / n
        square = float(q @ self._gram @ q) / n
        variance = square - mean * mean
        return mean, math.sqrt(variance) if variance > FLAT * square else 0.0

    # Internals ---------------------------------------------------------------------------------------------

    def _quantize(self, row: int, vector: np.ndarray) -> None:
        scale = np.float32(max(float(vector.max()), -float(vector.min())) / 127)
        codes = np.rint(vector / scale)  # within [-127, 127]: |x| <= max|x|
        residual = vector - scale * codes
        self._codes[row], self._scale[row] = codes, scale
        self._slack[row] = math.sqrt(float(residual @ residual)) * (1 + 1e-6)  # rounded up, as a bound should be

    def _account(self, vector: np.ndarray, sign: float) -> None:
        if self._waiting == PENDING:
            self.settle()
        self._pending[self._waiting], self._signs[self._waiting] = vector, sign
        self._waiting += 1

    def settle(self) -> None:
        """Add the rows waiting to the sums (a search does it first; a load's end, so that its first search
        does not)."""
        if self._waiting:
            pending, signs = self._pending[: self._waiting], self._signs[: self._waiting]
            self._sum += signs @ pending
            if signs.min() > 0:  # rows added only: numpy's symmetric product, a third faster
                self._gram += pending.T @ pending
            else:
                self._gram += (pending * signs[:, None]).T @ pending
            self._waiting = 0

    def _write(self, row: int, vector: np.ndarray) -> None:
        assert self._fd is not None
        data = vector.tobytes()
        try:
            written = os.pwrite(self._fd, data, row * self._row_bytes)
        except OSError as error:
            raise _file_error("written", error) from None
        if written != len(data):
            raise IndexFileError("the memory index's temporary file was not written: a short write")

    def _read(self, row: int, rows: int) -> np.ndarray:
        if self._fd is None:
            return self._exact[row : row + rows].copy()
        size = rows * self._row_bytes
        try:
            data = os.pread(self._fd, size, row * self._row_bytes)
        except OSError as error:
            raise _file_error("read", error) from None
        if len(data) != size:
            raise IndexFileError("the memory index's temporary file was not read: a short read")
        return np.frombuffer(data, dtype=np.float32).reshape(rows, self.dimension)

    def _truncate(self, rows: int) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, rows * self._row_bytes)
        except OSError as error:
            raise _file_error("truncated", error) from None


def _file_error(done: str, error: OSError) -> IndexFileError:
    """The OS's error as ours, by its code only (a path or data never reaches the message)."""
    code = errno.errorcode.get(error.errno or 0, type(error).__name__)
    return IndexFileError(f"the memory index's temporary file could not be {done} ({code})")
