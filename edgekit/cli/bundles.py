"""``edgekit bundle``, ``edgekit verify``, ``edgekit inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from device_agent.bundle import MANIFEST, SIGNATURE, read_unverified

from .. import bundler, workspace
from .output import emit, json_option


@click.command("bundle")
@click.argument("run_id")
@click.option("--name", required=True, help="Bundle name (versions auto-increment per name).")
@click.option("--key", "key_name", required=True, help="Signing key (role 'bundle').")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True)
@click.option("--expires-days", type=int, default=None, help="Devices refuse the bundle after this many days.")
@json_option
def bundle_cmd(run_id: str, name: str, key_name: str, out_dir: Path, expires_days: int | None, as_json: bool) -> None:
    """Pack a run into a signed bundle NAME-vN.ekb.

    Example: edgekit bundle latest --name wine --key release
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    built = bundler.build(workspace.find(), run_id, name, key_name, out_dir, expires_days)
    emit(
        built.to_dict(),
        as_json,
        lambda d: (
            f"{d['path']}  {d['name']} v{d['version']}  {d['size']} bytes  "
            f"sha256 {d['sha256'][:16]}…  signed by {d['keyid']}"
        ),
    )


@click.command("verify")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--trust", "trust_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@json_option
def verify_cmd(bundle: Path, trust_path: Path, as_json: bool) -> None:
    """Verify a bundle exactly as a device would; exit 7 if it is refused.

    Example: edgekit verify wine-v1.ekb --trust trust.json
    """
    vb = bundler.verify_file(bundle, trust_path)
    emit(
        {"ok": True, **vb.ref, "keyid": vb.keyid, "size": vb.size},
        as_json,
        lambda d: f"OK  {d['name']} v{d['version']}  signed by {d['keyid']}",
    )


def _inspect_text(d: dict[str, Any]) -> str:
    m = d["manifest"]
    model = m.get("model", {})
    lin = m.get("lineage", {})
    lines = [
        f"{m.get('name')} v{m.get('version')}  created {m.get('created')}  expires {m.get('expires') or 'never'}",
        f"  task       {model.get('task')}  features {len(model.get('features', []))}  classes {model.get('classes')}",
        f"  run        {lin.get('run_id')}  data {str((lin.get('data') or {}).get('sha256', ''))[:16]}…",
        f"  metrics    {((lin.get('metrics') or {}).get('holdout'))}",
        f"  parity     {lin.get('parity')}",
        f"  quantized  {(lin.get('quantization') or {}).get('applied', False)}",
        "  files",
    ]
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
    emit({"manifest": manifest, "signatures": sigs, "members": members_list}, as_json, _inspect_text)


COMMANDS = [bundle_cmd, verify_cmd, inspect_cmd]
