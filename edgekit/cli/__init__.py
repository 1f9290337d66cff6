"""``edgekit``: the host command line. Each command parses, calls the library, prints.

Errors from the library arrive as :class:`edgekit.errors.EdgekitError` (or the device
side's :class:`device_agent.errors.AgentError` when a bundle or trust file is bad) and
leave as one ``error:`` line on stderr — under ``--json``, as an error document on stdout —
with the exit code of :class:`edgekit.errors.ExitCode`: 1 generic, 2 usage or workspace,
3 data, 4 conversion, 5 bundle, 6 fleet, 7 verification failed. Click's own usage errors
(a missing option, a bad choice) are usage errors like any other. A command that needs the
``[host]`` extra says so instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from device_agent import __version__
from device_agent.errors import AgentError, ProtocolError

from ..errors import EdgekitError, ExitCode
from .output import fail

HOST_ONLY = frozenset({"sklearn", "skl2onnx", "onnx", "pyarrow", "tqdm"})
SERVE_ONLY = frozenset({"psycopg", "prometheus_client"})
REPORT_ONLY = frozenset({"plotly"})


class EdgekitGroup(click.Group):
    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv
        try:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:  # --help, --version
            sys.exit(exc.exit_code)
        except click.Abort:
            fail("aborted", "aborted", None, ExitCode.ERROR, as_json)
        except click.ClickException as exc:
            usage = isinstance(exc, click.UsageError)
            code = ExitCode.USAGE if usage else exc.exit_code
            if not as_json:
                exc.show()
                sys.exit(code)
            where = getattr(exc, "ctx", None)
            hint = f"see '{where.command_path} --help'" if where is not None else "see 'edgekit --help'"
            fail("usage" if usage else "error", exc.format_message(), hint, code, True)
        except EdgekitError as exc:
            fail(exc.kind, exc.message, exc.hint, exc.exit_code, as_json)
        except ProtocolError as exc:  # a name or id the user typed does not fit a topic level
            fail("usage", exc.detail, None, ExitCode.USAGE, as_json)
        except AgentError as exc:  # a bundle or trust file refused, as a device would refuse it
            fail(
                exc.code, exc.detail if as_json else f"{exc.code}: {exc.detail}", None, ExitCode.VERIFY_FAILED, as_json
            )
        except ImportError as exc:
            top = (exc.name or "").split(".")[0]
            if top not in HOST_ONLY | SERVE_ONLY | REPORT_ONLY:
                raise
            needed = "serve" if top in SERVE_ONLY else "report" if top in REPORT_ONLY else "host"
            fail(
                "missing_extra",
                f"this command needs {exc.name}",
                f"install the {needed} extra: pip install 'edgekit[{needed}]'",
                ExitCode.ERROR,
                as_json,
            )
        return None


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def main() -> None:
    """Train, convert, sign and ship tabular models to fleets of IoT devices.

    Example: edgekit init && edgekit train data.csv --target label
    """


def _register() -> None:
    from . import bundles, delivery, field, fleet, history, keys, registry, report, rollout, runs, serve, workspace

    for module in (workspace, keys, runs, bundles, registry, fleet, history, delivery, serve, report, rollout, field):
        for command in module.COMMANDS:
            main.add_command(command)
    from . import devices  # a secured fleet: enrolment (the broker's configuration: broker config)

    for command in devices.COMMANDS:
        main.add_command(command)
    from . import sim

    for command in sim.COMMANDS:
        main.add_command(command)

    from . import broker

    for command in broker.COMMANDS:
        main.add_command(command)

    from . import desired

    for command in desired.COMMANDS:
        main.add_command(command)


_register()
