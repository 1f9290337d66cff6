"""Errors the user sees: one line that says what is wrong and what to do, and an exit code
that means something (:class:`ExitCode`, the one list of them).

EdgekitError            base; the CLI prints ``error: <message>`` (or, under ``--json``, an
 │                      error document) and exits with ``exit_code``
 ├── UsageError         options that do not go together, too few arguments
 ├── WorkspaceError     no workspace, bad edgekit.toml, unknown run / key / bundle
 ├── DataError          the table cannot train a model (missing target, bad values, too few rows)
 ├── ConversionError    ONNX conversion failed or the parity gate refused the model
 ├── QuantizationError  the quantizer itself failed (a gate refusal is a report, not an error)
 ├── BundleBuildError   a bundle cannot be built or verified on the host
 └── FleetError         the broker is unreachable or the fleet did not answer in time

Each class also has a ``kind``: a short stable word for scripts (the ``code`` of a ``--json``
error document), where the exit code only says which family of failure it was. (The device's
failure codes, ``bundle.bad_signature`` and the like, are the catalogue in
``device_agent/errors.py``; a refusal the host reports for a device carries that code.)
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What ``edgekit`` exits with. Scripts may rely on these numbers (docs/json.md)."""

    OK = 0
    ERROR = 1  # anything else; also: a reproduction that does not match
    USAGE = 2  # a usage mistake, or the workspace (none, bad config, unknown run / model / key)
    DATA = 3  # the data cannot train a model
    CONVERSION = 4  # conversion, the parity gate, quantization
    BUNDLE = 5  # a bundle cannot be built
    FLEET = 6  # broker unreachable, devices not active in time
    VERIFY_FAILED = 7  # a bundle or trust file was refused, as a device would refuse it


class EdgekitError(Exception):
    exit_code: ExitCode = ExitCode.ERROR
    kind = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(EdgekitError):
    """The command was called wrongly (options that do not go together, too few arguments)."""

    exit_code = ExitCode.USAGE
    kind = "usage"


class WorkspaceError(EdgekitError):
    exit_code = ExitCode.USAGE
    kind = "workspace"


class DataError(EdgekitError):
    exit_code = ExitCode.DATA
    kind = "data"


class ConversionError(EdgekitError):
    exit_code = ExitCode.CONVERSION
    kind = "conversion"


class QuantizationError(EdgekitError):
    exit_code = ExitCode.CONVERSION
    kind = "quantization"


class BundleBuildError(EdgekitError):
    exit_code = ExitCode.BUNDLE
    kind = "bundle"


class FleetError(EdgekitError):
    exit_code = ExitCode.FLEET
    kind = "fleet"
