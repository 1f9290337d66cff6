"""From the field back to a better model: ``fleet samples pull``, ``label import``,
``compare`` and ``review``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from device_agent.trust import ROLE_DEPLOY

from .. import keys, progress, workspace
from ..fleet.deploy import Target
from .fleet import fleet_group
from .history import parse_since
from .output import emit, json_option


@fleet_group.group("samples")
def samples_group() -> None:
    """Rows devices captured for labelling (low confidence, and a uniform sample)."""


@samples_group.command("pull")
@click.option("--device", default=None, help="Ask this device.")
@click.option("--group", default=None, help="Ask every device of this group.")
@click.option("--since", default=None, help="Only rows captured since then: 2h, 7d or an ISO 8601 time.")
@click.option("--bundle", default=None, help="Only rows one model answered: NAME or NAME@V.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The CSV to write.")
@click.option("--wait", type=float, default=30.0, show_default=True, help="Seconds to wait for the devices' answers.")
@click.option("--key", "key_name", default=None, help="Deploy key (default: the workspace's only 'deploy' key).")
@click.option("--broker", default=None, help="MQTT broker URL (default: edgekit.toml).")
@json_option
def pull_cmd(
    device: str | None,
    group: str | None,
    since: str | None,
    bundle: str | None,
    out: Path,
    wait: float,
    key_name: str | None,
    broker: str | None,
    as_json: bool,
) -> None:
    """Ask devices (signed request) for their captured rows; write a CSV with an empty label column.

    Example: edgekit fleet samples pull --group plant-a --since 7d -o field.csv
    """
    from ..field.samples import pull

    ws = workspace.find()
    target = Target(device=device, group=group)
    shown = progress.for_cli(as_json)
    pulled = pull(
        broker or ws.broker,
        ws.prefix,
        target,
        keys.pick_key(ws, ROLE_DEPLOY, key_name),
        out,
        since=parse_since(since, time.time()),
        bundle=bundle,
        wait=wait,
        progress=shown.stage,
    )

    def text(d: dict[str, Any]) -> str:
        lines = [f"{d['path']}: {d['rows']} captured rows from {len(d['devices'])} device(s); fill in 'label'"]
        for dev in d["devices"]:
            state = "no answer" if not dev["answered"] else f"{dev['rows']} rows"
            if dev["answered"] and dev["capturing"] is False:
                state += " (capture is off there)"
            lines.append(f"  {dev['device']}: {state}")
        if d["unanswered"]:
            lines.append("devices that did not answer in time answer the next pull")
        return "\n".join(lines)

    emit(pulled.to_dict(), as_json, text, kind="samples")


@click.group("label")
def label_group() -> None:
    """Labelled field rows, kept as versioned datasets for training."""


@label_group.command("import")
@click.argument("labelled", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--into", required=True, help="The dataset to add the rows to (a new version of it).")
@click.option("--run", "run_id", default=None, help="Check against this run's training data.")
@click.option(
    "--model", default=None, help="Check against the training data of this bundle: NAME@V (default: the rows' bundle)."
)
@click.option("--label-column", default=None, help="The column holding the labels (default: label).")
@json_option
def label_import_cmd(
    labelled: Path, into: str, run_id: str | None, model: str | None, label_column: str | None, as_json: bool
) -> None:
    """Check labelled rows against the model's training data and add them to a dataset version.

    Example: edgekit label import field.csv --into pump-field
    """
    from ..field.labels import import_labels

    record = import_labels(workspace.find(), labelled, into, run=run_id, model=model, label_column=label_column)

    def text(d: dict[str, Any]) -> str:
        skipped = f", {d['unlabelled']} without a label left out" if d["unlabelled"] else ""
        dup = f", {d['duplicates']} duplicates" if d["duplicates"] else ""
        return (
            f"{d['name']}@{d['version']}: {d['rows']} rows ({d['added']} new{dup}{skipped}) "
            f"from {', '.join(d['devices']) or 'no named device'}; checked against run {d['run_id']}\n"
            f"train a challenger: edgekit train DATA --target {d['target']} --add-dataset {d['name']}@{d['version']}"
        )

    emit(record, as_json, text, kind="dataset")


def _compare_text(d: dict[str, Any]) -> str:
    a, b = d["champion"], d["challenger"]
    lines = [f"champion {a['label']}  vs  challenger {b['label']}: {d['verdict'].upper()}"]
    for s in d["on"]:
        lines.append(f"\n{s['path']} ({s['rows']} rows): {s['verdict']}")
        for k, m in s["metrics"].items():
            lines.append(
                f"  {k:<9} {m['champion']:.4f} → {m['challenger']:.4f}  Δ {m['delta']:+.4f}  "
                f"95% CI [{m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}]"
            )
        t = s["test"]
        if t["test"] == "mcnemar_exact":
            lines.append(
                f"  McNemar   p={t['p_value']:.3g}  (only the champion right: {t['champion_only_right']}, "
                f"only the challenger: {t['challenger_only_right']})"
            )
        else:
            lines.append(f"  Wilcoxon  p={t['p_value']:.3g}")
        for c in s.get("per_class") or []:
            if c["recall_delta"]:
                r = c["recall"]
                lines.append(f"  class {c['class']!s:<8} recall {r['champion']:.3f} → {r['challenger']:.3f}")
        ch = s["changed_rows"]
        extra = f" ({ch['fixed']} fixed, {ch['broken']} broken)" if "fixed" in ch else ""
        lat = s["latency_p50_us"]
        lines.append(f"  changed predictions {ch['count']}{extra}; p50 {lat['champion']} → {lat['challenger']} µs/row")
    lines.append(f"\nmodel size {a['size_bytes']} → {b['size_bytes']} bytes")
    if d["verdict"] != "worse":
        lines.append(
            "record it: edgekit compare … --json > cmp.json; edgekit registry promote NAME V --evidence cmp.json"
        )
    return "\n".join(lines)


@click.command("compare")
@click.argument("champion")
@click.argument("challenger")
@click.option(
    "--on",
    "on",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labelled rows to compare on: a holdout CSV, a labelled field CSV (repeatable).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@json_option
def compare_cmd(champion: str, challenger: str, on: tuple[Path, ...], seed: int, as_json: bool) -> None:
    """Challenger against champion on the same rows: deltas with CIs, a paired test, a verdict.

    \b
    CHAMPION and CHALLENGER are runs (an id, or latest) or bundles (NAME@V).
    Example: edgekit compare pump@1 pump@2 --on holdout.csv --on field.csv
    """
    from ..field.challenge import compare_models

    doc = compare_models(workspace.find(), champion, challenger, list(on), seed=seed)
    emit(doc, as_json, _compare_text, kind="model_comparison")


@click.command("review")
@click.argument("run_id")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default="review.csv", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Write at most this many rows.")
@json_option
def review_cmd(run_id: str, out: Path, limit: int | None, as_json: bool) -> None:
    """Training rows whose out-of-fold prediction confidently disagrees with their label, ranked.

    \b
    Fill in 'label' with the right class; bring the corrections back with
    edgekit label import review.csv --into NAME --run RUN (a challenger trained with
    --add-dataset NAME takes the corrected rows instead of the originals).
    Example: edgekit review latest -o review.csv
    """
    from ..field.review import review

    doc = review(workspace.find(), run_id, out, limit)

    def text(d: dict[str, Any]) -> str:
        lines = [f"{d['path']}: {d['issues']} of {d['rows']} training rows look mislabelled (run {d['run']})"]
        lines += [
            f"  row {t['row']}: labelled {t['given']!r}, the model says {t['suggested']!r} (p_given {t['p_given']})"
            for t in d["top"]
        ]
        return "\n".join(lines)

    emit(doc, as_json, text, kind="review")


COMMANDS: list[click.Command] = [label_group, compare_cmd, review_cmd]  # samples pull lives in the fleet group
