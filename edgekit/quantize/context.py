"""What every strategy is given (the float model and the rows), and how a strategy says it
does not fit the graph: a "not applicable" verdict, not a failure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .measure import _Feeder


@dataclass
class _Context:
    float_proto: onnx.ModelProto
    float_data: bytes
    feeder: _Feeder
    calib: np.ndarray
    eval_rows: np.ndarray
    check_feed: dict[str, np.ndarray]


class _NotApplicable(Exception):
    pass
