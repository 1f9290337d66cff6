"""One parser of broker URLs for device and host: TLS, credentials, and where secrets come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.broker import PASSWORD_ENV, endpoint, parse_url
from device_agent.config import AgentConfig
from device_agent.errors import ConfigError


def test_plain_and_tls_urls_with_their_default_ports() -> None:
    assert parse_url("mqtt://10.0.0.2") == ("10.0.0.2", 1883, False, "", "")
    assert parse_url("mqtts://broker.example") == ("broker.example", 8883, True, "", "")
    assert parse_url("mqtts://broker.example:9883")[:3] == ("broker.example", 9883, True)
    assert parse_url("10.0.0.2:1884")[:3] == ("10.0.0.2", 1884, False)


def test_credentials_in_the_url_are_kept_not_dropped() -> None:
    ep = endpoint("mqtts://pump%2D7:s%40cret@broker.example", environ={})
    assert (ep.username, ep.password, ep.tls) == ("pump-7", "s@cret", True)
    assert "s@cret" not in repr(ep) and "s@cret" not in ep.url  # never in logs


def test_a_password_in_the_clear_is_refused_except_on_loopback() -> None:
    with pytest.raises(ConfigError, match="in the clear"):
        endpoint("mqtt://user:pw@10.0.0.2", environ={})
    assert endpoint("mqtt://user:pw@127.0.0.1", environ={}).password == "pw"


def test_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    ep = endpoint("mqtts://b", username="u", password_file=str(secret), environ={PASSWORD_ENV: "from-env"})
    assert ep.password == "from-file"
    assert endpoint("mqtts://b", username="u", environ={PASSWORD_ENV: "from-env"}).password == "from-env"
    with pytest.raises(ConfigError, match="no username"):
        endpoint("mqtts://b", environ={PASSWORD_ENV: "x"})


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("http://b", {}, "unsupported broker URL scheme 'http'"),
        ("mqtt://b:99999", {}, "invalid port"),
        ("mqtt://b/path", {}, "path or query"),
        ("mqtt://b", {"ca": "ca.pem"}, "is for TLS: use an mqtts:// broker URL"),
        ("mqtts://b", {"ca": "/nonexistent/ca.pem"}, "does not exist"),
        ("mqtts://b", {"key": "/k"}, "needs its certificate"),
        ("", {}, "empty"),
    ],
)
def test_bad_broker_settings_say_what_is_wrong(url: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        endpoint(url, environ={}, **options)


def test_a_url_with_a_password_is_masked_in_errors() -> None:
    with pytest.raises(ConfigError) as err:
        endpoint("http://u:hunter2@b", environ={})
    assert "hunter2" not in str(err.value) and "***" in str(err.value)


def test_the_agent_reads_tls_settings_from_its_config_file(tmp_path: Path) -> None:
    for name in ("ca.pem", "dev.pem", "dev.key"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[mqtt]\nbroker = "mqtts://10.0.0.2"\nca = "{tmp_path}/ca.pem"\ncert = "{tmp_path}/dev.pem"\n'
        f'key = "{tmp_path}/dev.key"\n'
    )
    ep = AgentConfig.load(path).broker_endpoint()
    assert (ep.host, ep.port, ep.tls) == ("10.0.0.2", 8883, True)
    assert (ep.ca, ep.cert, ep.key) == (f"{tmp_path}/ca.pem", f"{tmp_path}/dev.pem", f"{tmp_path}/dev.key")


def test_tls_files_from_the_environment_unless_named(tmp_path: Path) -> None:
    for name in ("ca.pem", "c.pem", "c.key", "own.pem"):
        (tmp_path / name).write_text("x")
    env = {
        "EDGEKIT_BROKER_CA": str(tmp_path / "ca.pem"),
        "EDGEKIT_BROKER_CERT": str(tmp_path / "c.pem"),
        "EDGEKIT_BROKER_KEY": str(tmp_path / "c.key"),
    }
    ep = endpoint("mqtts://b", environ=env)
    assert (ep.ca, ep.cert, ep.key) == (env["EDGEKIT_BROKER_CA"], env["EDGEKIT_BROKER_CERT"], env["EDGEKIT_BROKER_KEY"])
    own = endpoint("mqtts://b", cert=str(tmp_path / "own.pem"), environ=env)
    assert (own.cert, own.key) == (str(tmp_path / "own.pem"), "")  # a named certificate never takes another's key
    assert endpoint("mqtt://b", environ=env).ca == ""  # plain MQTT: the TLS files are not for it
