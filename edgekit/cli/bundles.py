"""``edgekit bundle``, ``edgekit verify``, ``edgekit inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from device_agent.bundle import MANIFEST, SIGNATURE, read_unverified

from .. import bundler, progress, workspace
from ..errors import UsageError
from ..explain import top_features
from .output import emit, json_option


def _built_text(d: dict[str, Any]) -> str:
    lines = [
        f"{d['path']}  {d['name']} v{d['version']} ({d['stage']})  {d['size']} bytes  "
        f"sha256 {d['sha256'][:16]}…  signed by {d['keyid']}"
    ]
    lines += [f"warning: {w}" for w in d.get("warnings") or []]
    return "\n".join(lines)


@click.command("bundle")
@click.argument("run_id", required=False)
@click.option("--name", required=True, help="Bundle name (versions auto-increment per name).")
@click.option("--key", "key_name", required=True, help="Signing key (role 'bundle').")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True)
@click.option("--expires-days", type=int, default=None, help="Devices refuse the bundle after this many days.")
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Bundle your own ONNX classifier instead of a run (needs --reference and --target).",
)
@click.option(
    "--reference",
    "reference_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="With --model: CSV of reference rows (feature columns in the model's input order, plus the target).",
)
@click.option("--target", default=None, help="With --model: the target column of the reference CSV.")
@click.option(
    "--classes",
    default=None,
    help="With --model: class labels in the order of the probability columns (default: sorted target values).",
)
@click.option(
    "--capture/--no-capture",
    default=None,
    help="Devices keep low-confidence rows for labelling (default: edgekit.toml [policy] capture, off).",
)
@click.option(
    "--capture-below",
    default=None,
    help="Capture rows below this confidence: pN, a percentile of the out-of-fold confidence (default p5), or 0.7.",
)
@json_option
def bundle_cmd(
    run_id: str | None,
    name: str,
    key_name: str,
    out_dir: Path,
    expires_days: int | None,
    model_path: Path | None,
    reference_csv: Path | None,
    target: str | None,
    classes: str | None,
    capture: bool | None,
    capture_below: str | None,
    as_json: bool,
) -> None:
    """Pack a run, or your own ONNX model, into a signed bundle NAME-vN.ekb (registered as staging).

    \b
    Example: edgekit bundle latest --name wine --key release
    Example: edgekit bundle --model model.onnx --reference data.csv --target label --name wine --key release
    """
    from ..external import parse_classes

    if (run_id is None) == (model_path is None):
        raise UsageError("give either a RUN_ID or --model FILE", "see 'edgekit bundle --help'")
    if model_path is None and (reference_csv or target or classes):
        raise UsageError("--reference, --target and --classes go with --model", "see 'edgekit bundle --help'")
    if model_path is not None and (reference_csv is None or target is None):
        raise UsageError("--model needs --reference CSV and --target COLUMN", "see 'edgekit bundle --help'")
    ws = workspace.find()
    out_dir.mkdir(parents=True, exist_ok=True)
    if model_path is not None:
        assert reference_csv is not None and target is not None
        built = bundler.build_from_model(
            ws,
            model_path,
            reference_csv,
            target,
            name,
            key_name,
            out_dir,
            expires_days,
            classes=parse_classes(classes) if classes else None,
            progress=progress.for_cli(as_json),
        )
    else:
        assert run_id is not None
        built = bundler.build(
            ws,
            run_id,
            name,
            key_name,
            out_dir,
            expires_days,
            progress=progress.for_cli(as_json),
            capture=capture,
            capture_below=capture_below,
        )
    emit(built.to_dict(), as_json, _built_text, "bundle")


@click.command("verify")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--trust", "trust_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@json_option
def verify_cmd(bundle: Path, trust_path: Path, as_json: bool) -> None:
    """Verify a bundle exactly as a device would; exit 7 if it is refused.

    Example: edgekit verify wine-v1.ekb --trust trust.json
    """
    vb = bundler.verify_file(bundle, trust_path)  # a refusal exits 7, with an error document under --json
    emit(
        {"ok": True, **vb.ref.to_json(), "keyid": vb.keyid, "size": vb.size},
        as_json,
        lambda d: f"OK  {d['name']} v{d['version']}  signed by {d['keyid']}",
        "verification",
    )


def _metrics_text(metrics: Any) -> str:
    """``holdout accuracy 0.9867 f1_macro 0.9867 · cv …`` from an (untrusted) lineage."""
    if not isinstance(metrics, dict):
        return "-"
    parts = []
    for scope, values in sorted(metrics.items()):
        if isinstance(values, dict):
            numbers = [
                f"{k} {_number(v, '.4g' if abs(v) >= 1000 else '.4f')}"
                for k, v in sorted(values.items())
                if isinstance(v, int | float) and not isinstance(v, bool)
            ]
            parts.append(f"{scope} " + " ".join(numbers))
    return " · ".join(parts) or "-"


def _number(value: Any, spec: str = ".3g") -> str:
    """A figure from an (untrusted) manifest: formatted when it is a number, shown as-is otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return "?" if value is None else str(value)[:40]


def _parity_text(parity: dict[str, Any]) -> str:
    verdict = "ok" if parity.get("ok") is True else "FAILED"
    if parity.get("task") == "regression":
        dy, rel = _number(parity.get("max_abs_dy"), ".2e"), _number(parity.get("max_abs_dp"), ".1e")
        return f"{verdict}  max |Δy| {dy} ({rel} of the target's std)"
    text = f"{verdict}  max |Δp| {_number(parity.get('max_abs_dp'), '.2e')}"
    if "label_agreement" in parity:
        text += f"  label agreement {_number(parity.get('label_agreement'), '.2%')}"
    return text


def _quantized_text(quant: Any) -> str:
    if not isinstance(quant, dict) or not quant:
        return "not tried"
    if quant.get("applied") is True:
        before, after = quant.get("size_before"), quant.get("size_after")
        sizes = f", {before} → {after} bytes" if isinstance(before, int) and isinstance(after, int) else ""
        return f"yes ({quant.get('method')}{sizes})"
    return "no (the float model ships)"


def _inspect_text(d: dict[str, Any]) -> str:
    m = d["manifest"]
    model = m.get("model", {})
    lin = m.get("lineage", {})
    lines = [
        f"{m.get('name')} v{m.get('version')}  created {m.get('created')}  expires {m.get('expires') or 'never'}",
        f"  task       {model.get('task')}  features {len(model.get('features', []))}  classes {model.get('classes')}",
        (
            f"  run        {lin.get('run_id')}"
            if lin.get("run_id")
            else f"  model      user-supplied {(lin.get('model_file') or {}).get('name')}  "
            f"sha256 {str((lin.get('model_file') or {}).get('sha256', ''))[:16]}…"
        )
        + f"  data {str((lin.get('data') or {}).get('sha256', ''))[:16]}…",
        "  metrics    " + _metrics_text(lin.get("metrics")),
        "  parity     "
        + (
            _parity_text(parity)
            if isinstance(parity := lin.get("parity"), dict)
            else "not applicable (user-supplied model)"
        ),
        "  quantized  " + _quantized_text(lin.get("quantization")),
    ]
    feats = model.get("features") or []
    if feats:  # the order a device expects in a row given as a list
        lines.append(
            "  inputs     "
            + ", ".join(
                f"{f.get('name')}"
                + (" (category)" if f.get("type") == "categorical" else "")
                + (f" (date/time → {', '.join(map(str, f.get('parts') or []))})" if f.get("type") == "datetime" else "")
                + (" (may be missing)" if f.get("allow_missing") else "")
                for f in feats
            )
        )
    top = top_features(m.get("explain"), 3)
    if top:
        lines.append("  important  " + ", ".join(f"{n} {mean:+.3f}" for n, mean, _ in top))
    lines.append("  files")
    for name, entry in sorted(m.get("files", {}).items()):
        lines.append(f"    {name:16s} {entry.get('size'):>10} bytes  sha256 {str(entry.get('sha256'))[:16]}…")
    lines.append(f"  signatures {', '.join(s.get('keyid', '?') for s in d['signatures'])}  (not verified: use verify)")
    return "\n".join(lines)


@click.command("inspect")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def inspect_cmd(bundle: Path, as_json: bool) -> None:
    """Show a bundle's manifest without trusting it.

    Example: edgekit inspect wine-v1.ekb --json
    """
    import json

    manifest, members = read_unverified(bundle.read_bytes())
    try:
        sigs = json.loads(members.get(SIGNATURE, b"[]"))
    except ValueError:
        sigs = []
    members_list = sorted(k for k in members if k not in (MANIFEST,))
    emit({"manifest": manifest, "signatures": sigs, "members": members_list}, as_json, _inspect_text, "inspection")


COMMANDS = [bundle_cmd, verify_cmd, inspect_cmd]
