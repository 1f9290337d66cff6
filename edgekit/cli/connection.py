"""The broker options every command that talks to the broker takes, in one decorator.

``--broker`` names the broker; for a secured fleet ``--broker-ca``, ``--broker-cert`` and
``--broker-key`` (or ``--broker-username`` with ``--broker-password-file`` or
``EDGEKIT_MQTT_PASSWORD``) say who this host is. Each falls back to ``[fleet]`` in
``edgekit.toml``, so in a workspace none of them has to be typed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from device_agent.broker import PASSWORD_ENV, BrokerEndpoint, endpoint, parse_url
from device_agent.errors import ConfigError

from ..errors import UsageError
from ..workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class BrokerChoice:
    """What the command line said about the broker; :meth:`resolve` adds the workspace's."""

    url: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password_file: str | None = None

    @property
    def given(self) -> bool:
        return self.url is not None

    def resolve(self, ws: Workspace | None) -> BrokerEndpoint:
        url = self.url or (ws.broker if ws is not None else "")
        if not url:
            raise UsageError("no broker: pass --broker or run in a workspace (edgekit init)")
        files = ws.broker_files() if ws is not None else {}
        try:
            tls = parse_url(url)[2]
        except ConfigError as exc:
            raise UsageError(exc.detail, "give --broker mqtts://HOST:8883 or mqtt://HOST:1883") from None
        if not tls:  # the workspace's TLS files are for its mqtts:// broker, not a plain one named here
            files = {k: v for k, v in files.items() if k not in ("ca", "cert", "key")}

        def pick(name: str) -> str:
            value = getattr(self, name)
            return str(value) if value is not None else files.get(name, "")

        try:
            return endpoint(
                url,
                ca=pick("ca"),
                cert=pick("cert"),
                key=pick("key"),
                username=pick("username"),
                password_file=pick("password_file"),
            )
        except ConfigError as exc:
            hint = "see --broker-ca/--broker-cert/--broker-key or [fleet] in edgekit.toml"
            raise UsageError(exc.detail, hint) from None


def broker_options(func: F) -> F:
    """Add --broker and its TLS/credential options; the command receives ``broker: BrokerChoice``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["broker"] = BrokerChoice(
            kwargs.pop("broker"),
            kwargs.pop("broker_ca"),
            kwargs.pop("broker_cert"),
            kwargs.pop("broker_key"),
            kwargs.pop("broker_username"),
            kwargs.pop("broker_password_file"),
        )
        return func(*args, **kwargs)

    path = click.Path(dir_okay=False)
    options = [
        click.option("--broker", default=None, help="MQTT broker URL: mqtts://HOST:8883 (default: edgekit.toml)."),
        click.option("--broker-ca", type=path, default=None, help="CA certificate of the broker (mqtts://)."),
        click.option("--broker-cert", type=path, default=None, help="This host's client certificate (mqtts://)."),
        click.option("--broker-key", type=path, default=None, help="The key of that certificate."),
        click.option("--broker-username", default=None, help="Username on the broker."),
        click.option(
            "--broker-password-file",
            type=path,
            default=None,
            help=f"File holding the broker password (else the {PASSWORD_ENV} environment variable).",
        ),
    ]
    out: Any = wrapper
    for option in reversed(options):
        out = option(out)
    return out  # type: ignore[no-any-return]
