"""Shrink or speed up a converted model per model family, measured and reported honestly.

Every strategy that fits the graph is tried on the same rows; each candidate is checked (it
loads in onnxruntime, its inputs, outputs and class order are the float model's), measured
(bytes, single-row p50 latency on one onnxruntime thread, accuracy or R²/MAE, label changes
against the float model, each row run on its own as a device runs it) and gated. The
smallest candidate that passes and gains something ships; otherwise the float model ships,
byte for byte, and the report says "no gain". Every candidate's figures and verdict are in
the report (``candidates``).

What was found on skl2onnx graphs (onnxruntime 1.32, onnx 1.23, skl2onnx 1.20), and why each
strategy is what it is, is in the docstring of its module: :mod:`.int8` (dynamic and static
int8), :mod:`.linear` (the MatMul form of linear models), :mod:`.fp16`, :mod:`.compact`
(lossless compaction, with :mod:`.packed`), :mod:`.tree_values` (tree values rounded to
float16-representable float32). The gates are in :mod:`.gate`; :func:`quantize` and the
choice of what ships in :mod:`.choose`.
"""

from .choose import quantize
from .compact import compact_proto
from .contract import contract_problems
from .graph import annotate_types
from .linear import linear_parity, linear_to_matmul
from .packed import packed_bytes
from .report import Candidate, QuantizeReport
from .strategies import FAMILY_STRATEGIES, LOSSLESS, STRATEGIES

__all__ = [
    "FAMILY_STRATEGIES",
    "LOSSLESS",
    "STRATEGIES",
    "Candidate",
    "QuantizeReport",
    "annotate_types",
    "compact_proto",
    "contract_problems",
    "linear_parity",
    "linear_to_matmul",
    "packed_bytes",
    "quantize",
]
