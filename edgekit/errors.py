"""Errors the user sees: one line that says what is wrong and what to do.

EdgekitError            base; the CLI prints ``error: <message>`` and exits with ``exit_code``
 ├── UsageError         options that do not go together, too few arguments
 ├── WorkspaceError     no workspace, bad edgekit.toml, unknown run / key / bundle
 ├── DataError          the table cannot train a model (missing target, bad values, too few rows)
 ├── ConversionError    ONNX conversion failed or the parity gate refused the model
 ├── QuantizationError  the quantizer itself failed (a gate refusal is a report, not an error)
 ├── BundleBuildError   a bundle cannot be built or verified on the host
 └── FleetError         the broker is unreachable or the fleet did not answer in time
"""

from __future__ import annotations


class EdgekitError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(EdgekitError):
    """The command was called wrongly (options that do not go together, too few arguments)."""

    exit_code = 2


class WorkspaceError(EdgekitError):
    exit_code = 2


class DataError(EdgekitError):
    exit_code = 3


class ConversionError(EdgekitError):
    exit_code = 4


class QuantizationError(EdgekitError):
    exit_code = 4


class BundleBuildError(EdgekitError):
    exit_code = 5


class FleetError(EdgekitError):
    exit_code = 6
