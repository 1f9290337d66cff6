"""Models for the service tests and benchmarks, trained, bundled and signed by the real pipeline."""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Shipped:
    root: Path  # the workspace: deploying signs with its key "release"
    trust: Path  # the devices' trust file
    name: str
    bundles: list[Path]  # two signed versions (v1, v2) of the same model
    rows: list[list[float]]  # rows as a device receives them
    features: list[str]
    model_bytes: int  # size of model.onnx

    @property
    def n_features(self) -> int:
        return len(self.features)


def _ship(
    root: Path, name: str, names: Sequence[str], x: np.ndarray, y: np.ndarray, model: str, **params: Any
) -> Shipped:
    from edgekit import bundler, keys, pipeline, workspace

    root.mkdir(parents=True, exist_ok=True)
    ws = workspace.init(root)
    keys.generate(ws, "release")
    trust = root / "trust.json"
    trust.write_bytes(keys.trust_file(ws).to_json())
    path = root / f"{name}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, "label"])
        for row, label in zip(x.tolist(), y.tolist(), strict=True):
            w.writerow([*row, label])
    run = pipeline.train_run(ws, path, "label", model, params=params or None)
    bundles = [bundler.build(ws, run.id, name, "release", root).path for _ in range(2)]
    with zipfile.ZipFile(bundles[0]) as z:
        size = z.getinfo("model.onnx").file_size
    return Shipped(root, trust, name, bundles, x.tolist(), list(names), size)


def sensors_rf(root: Path, trees: int = 35) -> Shipped:
    """A random forest on 3,000 rows of 16 sensor readings: about 1 MiB of ONNX."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=3000, n_features=16, n_informative=8, n_classes=3, random_state=0)
    names = [f"s{i}" for i in range(16)]
    return _ship(
        root, "sensors", names, np.round(x, 5), y, "rf", n_estimators=trees, max_features="sqrt", min_samples_leaf=1
    )


def wine(root: Path, model: str = "logreg") -> Shipped:
    """scikit-learn's wine data (178 rows, 13 features), the family given."""
    from sklearn.datasets import load_wine

    data = load_wine()
    names = [n.replace("/", "_") for n in data.feature_names]
    return _ship(root, "wine", names, data.data, data.target, model)
