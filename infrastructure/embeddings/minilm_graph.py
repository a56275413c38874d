"""Build ``minilm.onnx``: the BERT encoder of all-MiniLM-L6-v2 as an ONNX graph without its weights.

Build time only (it needs the ``onnx`` package; the running agent needs only onnxruntime, which LiveKit's Silero
plugin installs). The graph holds the structure and a few constants; every weight is a graph input named as in the
model's safetensors file, so the embedder feeds the memory-mapped file's pages to ONNX Runtime as they are: no copy
per process, and no weights in this repository. ``tests/infrastructure/test_embeddings.py`` checks that the
committed file is what this module builds.

    python -m infrastructure.embeddings.minilm_graph     # rewrites infrastructure/embeddings/minilm.onnx

The inputs are ``tokens`` (n, 384): the token embeddings (word + position + token type) of a batch of b texts
padded to l tokens, flattened so every dense layer is one 2-D ``Gemm`` that reads its (out, in) weight transposed;
and ``mask`` (b, l), 1.0 for a real token. The output ``embedding`` (b, 384) is the mean of the real tokens' last
hidden states, L2-normalised, as sentence-transformers computes it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

GRAPH_PATH = Path(__file__).with_name("minilm.onnx")
HIDDEN = 384
HEADS = 12
LAYERS = 6
INTERMEDIATE = 1536
LAYER_NORM_EPS = 1e-12
OPSET = 17


def weight_shapes() -> dict[str, tuple[int, ...]]:
    """The graph's weight inputs, in the order the graph declares them, with the safetensors file's shapes."""
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.LayerNorm.weight": (HIDDEN,),
        "embeddings.LayerNorm.bias": (HIDDEN,),
    }
    dense = {
        "attention.self.query": (HIDDEN, HIDDEN),
        "attention.self.key": (HIDDEN, HIDDEN),
        "attention.self.value": (HIDDEN, HIDDEN),
        "attention.output.dense": (HIDDEN, HIDDEN),
        "intermediate.dense": (INTERMEDIATE, HIDDEN),
        "output.dense": (HIDDEN, INTERMEDIATE),
    }
    for i in range(LAYERS):
        for name, shape in dense.items():
            shapes[f"encoder.layer.{i}.{name}.weight"] = shape
            shapes[f"encoder.layer.{i}.{name}.bias"] = (shape[0],)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"encoder.layer.{i}.{norm}.weight"] = (HIDDEN,)
            shapes[f"encoder.layer.{i}.{norm}.bias"] = (HIDDEN,)
    return shapes


def build() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        constants.append(numpy_helper.from_array(value, name))
        return name

    def op(kind: str, inputs: list[str], **attributes: object) -> str:
        out = f"{kind.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(kind, inputs, [out], name=out, **attributes))
        return out

    def layer_norm(x: str, prefix: str) -> str:
        return op("LayerNormalization", [x, prefix + ".weight", prefix + ".bias"], axis=-1, epsilon=LAYER_NORM_EPS)

    def dense(x: str, prefix: str) -> str:
        return op("Gemm", [x, prefix + ".weight", prefix + ".bias"], transB=1)

    head_dim = HIDDEN // HEADS
    one = constant("one", np.array(1.0, np.float32))
    batch = op("Slice", [op("Shape", ["mask"]), constant("zero_1d", np.array([0])), constant("one_1d", np.array([1]))])
    by_head = op("Concat", [batch, constant("length_heads_dim", np.array([-1, HEADS, head_dim]))], axis=0)
    by_text = op("Concat", [batch, constant("length_hidden", np.array([-1, HIDDEN]))], axis=0)
    flat = constant("flat", np.array([-1, HIDDEN]))
    # Padding gets a large negative score, so softmax gives it no weight.
    padding = op("Mul", [op("Sub", [one, "mask"]), constant("minus_1e9", np.array(-1e9, np.float32))])
    attention_bias = op("Unsqueeze", [padding, constant("axes_1_2", np.array([1, 2]))])
    scale = constant("scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    half = constant("half", np.array(0.5, np.float32))
    inv_sqrt2 = constant("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), np.float32))

    x = layer_norm("tokens", "embeddings.LayerNorm")
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        q, k, v = (
            op("Transpose", [op("Reshape", [dense(x, p + "attention.self." + name), by_head])], perm=perm)
            for name, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3]))
        )
        scores = op("Add", [op("Mul", [op("MatMul", [q, k]), scale]), attention_bias])
        context = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        context = op("Reshape", [op("Transpose", [context], perm=[0, 2, 1, 3]), flat])
        x = layer_norm(op("Add", [x, dense(context, p + "attention.output.dense")]), p + "attention.output.LayerNorm")
        up = dense(x, p + "intermediate.dense")
        gelu = op("Mul", [op("Mul", [up, half]), op("Add", [op("Erf", [op("Mul", [up, inv_sqrt2])]), one])])
        x = layer_norm(op("Add", [x, dense(gelu, p + "output.dense")]), p + "output.LayerNorm")

    token_axis = constant("axis_1", np.array([1]))
    masked = op("Mul", [op("Reshape", [x, by_text]), op("Unsqueeze", ["mask", constant("axis_2", np.array([2]))])])
    pooled = op("Div", [op("ReduceSum", [masked, token_axis], keepdims=0), op("ReduceSum", ["mask", token_axis])])
    nodes.append(helper.make_node("LpNormalization", [pooled], ["embedding"], name="embedding", axis=1, p=2))

    inputs = [
        helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["n", HIDDEN]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["b", "l"]),
    ] + [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(s)) for name, s in weight_shapes().items()]
    output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["b", HIDDEN])
    graph = helper.make_graph(nodes, "all-MiniLM-L6-v2", inputs, [output], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="companion")
    model.ir_version = 8  # what onnxruntime 1.x reads
    onnx.checker.check_model(model)
    return model.SerializeToString()


if __name__ == "__main__":
    GRAPH_PATH.write_bytes(build())
    sys.stdout.write(f"wrote {GRAPH_PATH} ({GRAPH_PATH.stat().st_size} bytes)\n")
