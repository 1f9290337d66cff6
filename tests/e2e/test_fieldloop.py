"""The field loop's proof, on generated data with a known shift and a known truth: v1 is unsure
of the shifted rows, the device captures them, they come back, get labelled, train a
challenger that compare finds better on field rows, which is promoted with that evidence and
deployed — and the device captures far fewer low-confidence rows with it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _fieldloop() -> object:
    spec = importlib.util.spec_from_file_location("fieldloop", ROOT / "examples" / "fieldloop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.broker
@pytest.mark.timeout(240)
def test_from_the_field_back_to_a_better_model(tmp_path: Path) -> None:
    summary = _fieldloop().run(tmp_path / "loop", quiet=True)  # type: ignore[attr-defined]

    # v1 never saw the vibration sensor move: on the field rows it is a coin toss.
    assert summary["v1_field_accuracy"] < 0.7
    rates = summary["captured_low_rate"]
    assert rates["v1"] > 0.1

    # The captured rows came back labelled, as a dataset with its lineage.
    dataset = summary["dataset"]
    assert dataset["rows"] >= 20 and dataset["devices"] == ["pump-7"] and dataset["imported_by"] == "field-team"
    added = summary["v2_run"]["data"]["added"]
    assert added == [
        {
            "dataset": "pump-field",
            "version": 1,
            "devices": ["pump-7"],
            "rows": dataset["rows"],
            "fingerprint": dataset["fingerprint"],
        }
    ]

    # compare: better on the field rows, and not worse on the holdout.
    cmp = summary["comparison"]
    assert cmp["verdict"] == "better"
    holdout, field = cmp["on"]
    assert field["verdict"] == "better" and field["test"]["p_value"] < 0.01
    assert field["metrics"]["accuracy"]["ci95"][0] > 0.2
    assert field["changed_rows"]["fixed"] > field["changed_rows"]["broken"]
    assert holdout["verdict"] != "worse"

    # The promotion carries the verdict and keeps the evidence.
    [demoted, promoted] = summary["promotion"]["changes"]
    assert (demoted["version"], demoted["to_stage"]) == (1, "archived")
    assert (promoted["version"], promoted["to_stage"]) == (2, "production")
    assert promoted["reason"].startswith("compare vs pump v1: better")
    assert Path(summary["promotion"]["evidence"]).is_file()

    # With v2 the device is sure of the field rows, and right.
    assert summary["v2_field_accuracy"] > 0.85
    assert rates["v2"] < rates["v1"] / 2

    # The review found the training data's noisy labels (the generator flips labels near the threshold).
    assert summary["review"]["issues"] > 0
