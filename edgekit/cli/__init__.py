"""``edgekit``: the host command line. Each command parses, calls the library, prints.

Errors from the library arrive as :class:`edgekit.errors.EdgekitError` (or the device
side's :class:`device_agent.errors.AgentError` when a bundle or trust file is bad) and
leave as one ``error:`` line on stderr with a meaningful exit code:
1 generic, 2 usage or workspace, 3 data, 4 conversion, 5 bundle, 6 fleet, 7 verification
failed. A command that needs the ``[host]`` extra says so instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from device_agent import __version__
from device_agent.errors import AgentError, ProtocolError

from ..errors import EdgekitError

USAGE = 2
VERIFY_FAILED = 7
HOST_ONLY = frozenset({"sklearn", "skl2onnx", "onnx", "pyarrow"})
SERVE_ONLY = frozenset({"psycopg", "prometheus_client"})


class EdgekitGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except ProtocolError as exc:  # a name or id the user typed does not fit a topic level
            click.echo(f"error: {exc.detail}", err=True)
            sys.exit(USAGE)
        except AgentError as exc:
            click.echo(f"error: {exc.code}: {exc.detail}", err=True)
            sys.exit(VERIFY_FAILED)
        except ImportError as exc:
            top = (exc.name or "").split(".")[0]
            if top not in HOST_ONLY | SERVE_ONLY:
                raise
            extra = "serve" if top in SERVE_ONLY else "host"
            click.echo(
                f"error: this command needs {exc.name} (install the {extra} extra: pip install 'edgekit[{extra}]')",
                err=True,
            )
            sys.exit(1)


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def main() -> None:
    """Train, convert, sign and ship tabular models to fleets of IoT devices.

    Example: edgekit init && edgekit train data.csv --target label
    """


def _register() -> None:
    from . import bundles, delivery, fleet, keys, registry, runs, serve, workspace

    for module in (workspace, keys, runs, bundles, registry, fleet, delivery, serve):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
