"""``edgekit``: the host command line. Each command parses, calls the library, prints.

Errors from the library arrive as :class:`edgekit.errors.EdgekitError` (or the device
side's :class:`device_agent.errors.AgentError` when a bundle or trust file is bad) and
leave as one ``error:`` line on stderr with a meaningful exit code:
1 generic, 2 workspace, 3 data, 4 conversion, 5 bundle, 6 fleet, 7 verification failed.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from device_agent import __version__
from device_agent.errors import AgentError

from ..errors import EdgekitError

VERIFY_FAILED = 7


class EdgekitGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except AgentError as exc:
            click.echo(f"error: {exc.code}: {exc.detail}", err=True)
            sys.exit(VERIFY_FAILED)


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def main() -> None:
    """Train, convert, sign and ship tabular models to fleets of IoT devices.

    Example: edgekit init && edgekit train data.csv --target label
    """


def _register() -> None:
    from . import bundles, delivery, fleet, keys, registry, runs, workspace

    for module in (workspace, keys, runs, bundles, registry, fleet, delivery):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
