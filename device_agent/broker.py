"""Where the broker is and how a client proves who it is: one parser for device and host.

A broker is named by a URL — ``mqtt://HOST[:1883]`` in the clear, ``mqtts://HOST[:8883]``
over TLS — plus, for a secured fleet, a CA certificate to check the broker against, a
client certificate and key (the device's identity from the fleet's CA), or a username
and password. The agent and every host command build their connection from
:class:`BrokerEndpoint`, so both sides read the same URLs the same way.

An mqtts:// broker's CA, certificate and key not named otherwise come from
``EDGEKIT_BROKER_CA``, ``EDGEKIT_BROKER_CERT`` and ``EDGEKIT_BROKER_KEY``.

Secrets never have to be typed on a command line (where ``ps`` and shell history see
them): a password comes, first to last, from the URL (``mqtts://user:pw@host``, for a
config file), a password file, or the ``EDGEKIT_MQTT_PASSWORD`` environment variable.
A password given without TLS is refused (except on loopback): it would cross the network
in the clear.

Standard library only at import (``edgekit-agent --help`` must not wait); paho is touched
only in :meth:`BrokerEndpoint.apply`, on a client the caller built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import ConfigError

PASSWORD_ENV = "EDGEKIT_MQTT_PASSWORD"
# Defaults for an mqtts:// broker's files when no flag or config file names them (CI, containers).
FILE_ENV = {"ca": "EDGEKIT_BROKER_CA", "cert": "EDGEKIT_BROKER_CERT", "key": "EDGEKIT_BROKER_KEY"}
PLAIN, SECURE = ("mqtt", "tcp"), ("mqtts", "ssl", "tls")
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # a password may cross these in the clear
DEFAULT_PORT = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883, "tls": 8883}


@dataclass(frozen=True)
class BrokerEndpoint:
    """A broker and the credentials to present to it; ``password`` never appears in repr."""

    host: str
    port: int
    tls: bool
    username: str = ""
    password: str = field(default="", repr=False)
    ca: str = ""
    cert: str = ""
    key: str = ""

    @property
    def url(self) -> str:
        """The URL without its password: safe for logs and error messages."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.url

    def apply(self, client: Any) -> None:
        """Set TLS and credentials on a paho client before it connects."""
        if self.tls:
            import ssl

            context = ssl.create_default_context(cafile=self.ca or None)
            if self.cert:
                context.load_cert_chain(self.cert, self.key or None)
            client.tls_set_context(context)
        if self.username:
            client.username_pw_set(self.username, self.password or None)


def parse_url(url: str) -> tuple[str, int, bool, str, str]:
    """``mqtt[s]://[user[:pw]@]host[:port]`` → (host, port, tls, user, password)."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("the broker URL is empty: give mqtts://HOST:8883 (or mqtt://HOST:1883 for a local try-out)")
    text = url.strip()
    parts = urlsplit(text if "://" in text else f"mqtt://{text}")
    scheme = parts.scheme.lower()
    if scheme not in PLAIN + SECURE:
        raise ConfigError(
            f"unsupported broker URL scheme {parts.scheme!r} in {_safe(text)!r}; use mqtts://HOST:PORT or mqtt://HOST:PORT"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"broker URL {_safe(text)!r} has a path or query; write only mqtts://HOST:PORT")
    try:
        port = parts.port or DEFAULT_PORT[scheme]
    except ValueError:
        raise ConfigError(f"broker URL {_safe(text)!r} has an invalid port") from None
    user = unquote(parts.username) if parts.username else ""
    password = unquote(parts.password) if parts.password else ""
    return parts.hostname or "127.0.0.1", port, scheme in SECURE, user, password


def endpoint(
    url: str,
    *,
    ca: str = "",
    cert: str = "",
    key: str = "",
    username: str = "",
    password_file: str = "",
    environ: Mapping[str, str] | None = None,
) -> BrokerEndpoint:
    """A checked endpoint: files exist, TLS options only with TLS, a password only over TLS."""
    host, port, tls, url_user, url_password = parse_url(url)
    env = os.environ if environ is None else environ
    if tls:
        ca = ca or env.get(FILE_ENV["ca"], "")
        if not cert and not username and not url_user:
            cert, key = env.get(FILE_ENV["cert"], ""), key or env.get(FILE_ENV["key"], "")
    if not tls and (ca or cert or key):
        given = next(name for name, value in (("ca", ca), ("cert", cert), ("key", key)) if value)
        raise ConfigError(f"a broker {given} file is for TLS: use an mqtts:// broker URL (mqtts://{host}:8883)")
    if key and not cert:
        raise ConfigError("a broker key file needs its certificate: give the cert file too")
    for what, path in (("CA", ca), ("certificate", cert), ("key", key), ("password", password_file)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"broker {what} file {path!r} does not exist")
    password = url_password
    if not password and password_file:
        try:
            with open(password_file, encoding="utf-8") as fh:
                password = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read broker password file {password_file!r}: {exc.strerror}") from None
    if not password:
        password = env.get(PASSWORD_ENV, "")
    user = username or url_user
    if password and not user:
        raise ConfigError(f"a broker password was given but no username: set the username (or unset {PASSWORD_ENV})")
    if password and not tls and host not in LOOPBACK:
        raise ConfigError(f"refusing to send a broker password in the clear to {host}:{port}: use mqtts://{host}:8883")
    return BrokerEndpoint(host, port, tls, user, password, ca, cert, key)


def _safe(url: str) -> str:
    """The URL with any password replaced, for messages."""
    try:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.password:
            return url.replace(f":{parts.password}@", ":***@", 1)
    except ValueError:
        pass
    return url
