"""Desired states that expire, and a host that keeps them fresh.

A signed desired state used to live for ever: a captured old one, replayed to a re-imaged
device, installed an old model. Now ``edgekit deploy`` writes ``issued`` and ``expires``
(``DEFAULT_TTL_S`` later) into every desired state, devices refuse an expired one, and the
host re-signs the retained ones before they expire — like TUF's timestamp role — with the
same sequence number (devices take it as a redelivery: nothing is installed again), from
``edgekit desired refresh`` or periodically from ``edgekit serve --resign-every``.

Only documents that verify with the workspace's own trust are re-signed: a forged retained
document is reported, never made valid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_agent.errors import AgentError
from device_agent.protocol import DesiredState, Topics
from device_agent.trust import DESIRED_DOMAIN, ROLE_DEPLOY, Trust, open_envelope, seal

from .client import Broker, collect, connect, publish_all

DEFAULT_TTL_S = 30 * 86400.0  # a desired state's life unless re-signed
RECOVERY_TTL_S = 3600.0  # a recovery document's life: short, since a replay of it resets a sequence


@dataclass(frozen=True)
class Refreshed:
    topic: str
    target: str
    seq: int
    expires: float | None  # the new expiry; None when the document was not re-signed
    problem: str | None = None  # why it was not

    def to_dict(self) -> dict[str, Any]:
        from .status import iso

        return {
            "topic": self.topic,
            "target": self.target,
            "seq": self.seq,
            "expires": iso(self.expires),
            "problem": self.problem,
        }


def desired_topics(topics: Topics) -> list[str]:
    return [topics.all_devices("desired"), f"{topics.prefix}/group/+/desired"]


def resign(
    messages: list[tuple[str, bytes, bool]],
    deploy_key: Ed25519PrivateKey,
    trust: Trust,
    ttl_s: float,
    now: float,
) -> tuple[list[Refreshed], list[tuple[str, bytes, bool]]]:
    """Each retained desired state re-signed with a new issue time and expiry (pure: the
    messages to publish are returned)."""
    done: list[Refreshed] = []
    items: list[tuple[str, bytes, bool]] = []
    for topic, payload, _ in sorted(messages):
        if not payload or not topic.endswith("/desired"):
            continue
        try:
            body, _kid = open_envelope(trust, ROLE_DEPLOY, DESIRED_DOMAIN, payload, "desired state")
            doc = DesiredState.from_json(body)
        except AgentError as exc:
            done.append(Refreshed(topic, "?", 0, None, f"{exc.code}: {exc.detail}"))
            continue
        fresh = replace(doc, issued=now, expires=now + ttl_s)
        items.append((topic, seal(deploy_key, DESIRED_DOMAIN, fresh.to_json()), True))
        done.append(Refreshed(topic, doc.target, doc.seq, fresh.expires))
    return done, items


def recovery_message(
    messages: list[tuple[str, bytes, bool]],
    topic: str,
    target: str,
    root_key: Ed25519PrivateKey,
    trust: Trust,
    now: float,
) -> tuple[Refreshed, tuple[str, bytes, bool]]:
    """The retained desired state of ``target`` again, signed by a root key as a recovery: the
    device takes its sequence (the time now, in µs) as the new start, whatever it held before
    (a sequence far ahead, from a host with a wrong clock or a bad key, froze it)."""
    current = [p for t, p, _ in messages if t == topic and p]
    if not current:
        raise ValueError(f"no desired state is retained for {target}: deploy to it first")
    body, _kid = open_envelope(trust, ROLE_DEPLOY, DESIRED_DOMAIN, current[-1], "desired state")
    doc = DesiredState.from_json(body)
    fresh = replace(doc, seq=int(now * 1_000_000), issued=now, expires=now + RECOVERY_TTL_S, recover=True)
    item = (topic, seal(root_key, DESIRED_DOMAIN, fresh.to_json()), True)
    return Refreshed(topic, doc.target, fresh.seq, fresh.expires), item


def recover(
    broker: Broker, prefix: str, topic: str, target: str, root_key: Ed25519PrivateKey, trust: Trust
) -> Refreshed:
    """Publish a recovery document for ``target`` (see :func:`recovery_message`)."""
    with connect(broker, purpose="recover") as conn:
        messages = collect(conn, [topic])
        done, item = recovery_message(messages, topic, target, root_key, trust, time.time())
        publish_all(conn, [item])
    return done


def refresh(
    broker: Broker, prefix: str, deploy_key: Ed25519PrivateKey, trust: Trust, ttl_s: float = DEFAULT_TTL_S
) -> list[Refreshed]:
    """Re-sign every retained desired state on the broker."""
    topics = Topics(prefix)
    with connect(broker, purpose="refresh") as conn:
        messages = collect(conn, desired_topics(topics))
        done, items = resign(messages, deploy_key, trust, ttl_s, time.time())
        if items:
            publish_all(conn, items)
    return done
