"""The features a row carries, and the model inputs they become: one definition for both sides.

Most features go into the model as they are. A *date/time* feature does not: a timestamp is
never seen twice, so what a model can learn from is its parts (the hour, the weekday, the
month). Those parts are computed here, by :class:`Expander`, from the raw text a row carries;
the host computes the training columns with this same code (``edgekit.data`` imports it),
and the device expands every served row with it before validation, inference and drift
accounting. So training, serving and the drift reference see the same columns, and there is
one definition of "the hour of 2024-03-01 12:30" to keep right.

Why not inside the ONNX graph: ONNX has no operator that reads a date from text, so the
device would still have to turn the text into a number (a second definition), and an epoch
timestamp fed as float32 (the input type of numeric columns) is only precise to 128 s today.

Values are ISO 8601 text (``2024-03-01``, ``2024-03-01 12:30:00``, ``2024-03-01T12:30:00Z``,
``…+02:00``). Parts are read as written: the wall-clock time of the text, an offset is not
applied (a sensor's "8 o'clock" is what its data mean). Numbers are refused rather than
guessed at (seconds or milliseconds? which time zone?).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import BadValue, WrongShape

NUMERIC, CATEGORICAL, DATETIME = "numeric", "categorical", "datetime"
FEATURE_TYPES = (NUMERIC, CATEGORICAL, DATETIME)
# The parts a date/time feature can become, each a number.
DATETIME_PARTS = ("year", "month", "day", "weekday", "hour", "minute", "dayofyear")
DEFAULT_PARTS = ("hour", "weekday", "month")  # values with a time of day
DATE_ONLY_PARTS = ("weekday", "month", "day")  # values that are dates only


@dataclass(frozen=True)
class Feature:
    """One value of a row, as the bundle manifest describes it (docs/contract-model-spec.md)."""

    name: str
    type: str  # "numeric" | "categorical" | "datetime"
    allow_missing: bool = False
    parts: tuple[str, ...] = ()  # datetime only: the model inputs it becomes, in order


def part_name(feature: str, part: str) -> str:
    """The model input a part of a date/time feature becomes: ``ts.hour``."""
    return f"{feature}.{part}"


def model_inputs(features: Sequence[Feature]) -> tuple[Feature, ...]:
    """The model's inputs, in order: each date/time feature replaced by its parts (numeric,
    missing where the value may be missing), every other feature as it is."""
    out: list[Feature] = []
    for f in features:
        if f.type == DATETIME:
            out += [Feature(part_name(f.name, p), NUMERIC, f.allow_missing) for p in f.parts]
        else:
            out.append(f)
    return tuple(out)


def parse_datetime(text: str) -> datetime:
    """An ISO 8601 date or date/time; raises ValueError for anything else."""
    value = text.strip()
    if len(value) < 8 or not value[:4].isdigit():
        raise ValueError(f"not an ISO 8601 date: {text!r}")
    return datetime.fromisoformat(value)


def has_time(text: str) -> bool:
    """Whether an ISO 8601 value carries a time of day (a ``T`` or a space after the date)."""
    rest = text.strip()[8:]
    return "T" in rest or " " in rest or ":" in rest


def datetime_parts(value: datetime, parts: Sequence[str]) -> list[float]:
    """The numbers a date/time becomes: month 1-12, day 1-31, weekday 0 (Monday) to 6,
    hour 0-23, minute 0-59, dayofyear 1-366, the year itself."""
    out: list[float] = []
    for part in parts:
        if part == "year":
            out.append(float(value.year))
        elif part == "month":
            out.append(float(value.month))
        elif part == "day":
            out.append(float(value.day))
        elif part == "weekday":
            out.append(float(value.weekday()))
        elif part == "hour":
            out.append(float(value.hour))
        elif part == "minute":
            out.append(float(value.minute))
        elif part == "dayofyear":
            out.append(float(value.timetuple().tm_yday))
        else:
            raise ValueError(f"unknown date/time part {part!r}")
    return out


def expand_value(feature: Feature, value: Any) -> list[Any]:
    """A date/time feature's raw value as its parts (``None`` each when missing). Raises a
    :class:`BadValue` naming the feature for anything that is not a date/time."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if feature.allow_missing:
            return [None] * len(feature.parts)
        raise BadValue(f"feature {feature.name!r} is missing; this model was trained without missing values")
    if not isinstance(value, str):
        raise BadValue(
            f"feature {feature.name!r} is {repr(value)[:40]}; this model needs a date/time as ISO 8601 text "
            "(e.g. 2024-03-01 12:30:00)"
        )
    try:
        return list(datetime_parts(parse_datetime(value), feature.parts))
    except ValueError:
        raise BadValue(
            f"feature {feature.name!r} is {value[:40]!r}, not an ISO 8601 date/time (e.g. 2024-03-01 12:30:00)"
        ) from None


class Expander:
    """Turns a row of features into a row of model inputs (date/time values into their parts).
    Built once per model; only models with a date/time feature need one."""

    def __init__(self, features: Sequence[Feature]) -> None:
        self.features = tuple(features)
        self._datetime = [i for i, f in enumerate(self.features) if f.type == DATETIME]

    def __call__(self, row: Sequence[Any]) -> list[Any]:
        if not isinstance(row, (list, tuple)):
            raise WrongShape(f"a row must be a list of {len(self.features)} values")
        if len(row) != len(self.features):
            raise WrongShape(f"row has {len(row)} values, the model expects {len(self.features)}")
        out: list[Any] = []
        for feature, value in zip(self.features, row, strict=True):
            if feature.type == DATETIME:
                out += expand_value(feature, value)
            else:
                out.append(value)
        return out
