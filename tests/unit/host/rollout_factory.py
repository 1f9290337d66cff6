"""Both sides of a rollout's comparison built from real drift windows: generated rows fed
through ``device_agent.drift.DriftWindow`` by a model function, as devices would report them,
and heartbeats with counters and latency. For the gate tests (no broker, no database)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from device_agent.drift import DriftWindow, Reference
from device_agent.protocol import BundleRef
from edgekit.alerts.facts import Beat, BundleInfo, Window
from edgekit.reference import build_reference
from edgekit.rollout.gates import Side

F = 4
NAMES = [f"x{i}" for i in range(F)]
ROWS = 200
OLD = BundleRef("pump", 1, "aa" * 32)
NEW = BundleRef("pump", 2, "bb" * 32)
IMPORTANCE = {"x0": 0.3, "x1": 0.1, "x2": 0.05, "x3": 0.0}
Model = Callable[[np.ndarray], np.ndarray]


def good(x: np.ndarray) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-2.0 * (x[:, 0] + 0.5 * x[:, 1])))
    return np.c_[1.0 - p, p]


def biased(x: np.ndarray) -> np.ndarray:
    """Says class 1 far more often than ``good`` on the same rows."""
    p = 1.0 / (1.0 + np.exp(-2.0 * (x[:, 0] + 0.5 * x[:, 1] + 1.5)))
    return np.c_[1.0 - p, p]


def unsure(x: np.ndarray) -> np.ndarray:
    """The same decisions as ``good``, with much less confidence."""
    p = 1.0 / (1.0 + np.exp(-0.3 * (x[:, 0] + 0.5 * x[:, 1])))
    return np.c_[1.0 - p, p]


def info(model: Model = good, shift: float = 0.0) -> BundleInfo:
    """A bundle's reference from 2,000 training rows (``shift`` moves x0's training data)."""
    rng = np.random.default_rng(2024)
    train = rng.standard_normal((2000, F))
    train[:, 0] += shift
    ref = Reference.from_json(build_reference(train, NAMES, [0, 1], model(train), window=ROWS, alpha=0.01))
    return BundleInfo(ref, IMPORTANCE, low_confidence=0.6)


def windows(
    bundle: BundleRef, ref: Reference, model: Model, devices: list[str], per_device: int, seed: int, shift: float = 0.0
) -> list[Window]:
    out = []
    for k, device in enumerate(devices):
        rng = np.random.default_rng([seed, k])
        w = DriftWindow(ref, window=ROWS, low_confidence=0.6)
        for i in range(per_device):
            x = rng.standard_normal((ROWS, F))
            x[:, 0] += shift
            proba = model(x)
            w.update(x, label_idx=proba.argmax(axis=1), confidence=proba.max(axis=1))
            out.append(Window(device, "boot", i + 1, 1000.0 + 10.0 * i, bundle, w.report()))
            w.reset()
    return out


def beats(
    bundle: BundleRef, n: int, served_per: int, rejected_per: int, p99_us: float, t0: float = 1000.0
) -> list[Beat]:
    return [
        Beat(t0 + 5.0 * i, "boot", bundle.sha256, served=served_per * i, rejected=rejected_per * i, p99_us=p99_us)
        for i in range(n)
    ]


def side(
    bundle: BundleRef,
    devices: list[str],
    bundle_info: BundleInfo | None,
    model: Model = good,
    per_device: int = 3,
    seed: int = 1,
    shift: float = 0.0,
    rejected_per: int = 0,
    p99_us: float = 50.0,
) -> Side:
    ref = (bundle_info or info(model)).reference
    return Side(
        bundle,
        tuple(devices),
        {d: beats(bundle, 6, 100, rejected_per, p99_us) for d in devices},
        windows(bundle, ref, model, devices, per_device, seed, shift),
        bundle_info,
    )
