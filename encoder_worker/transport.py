"""kombu's Redis transports (direct and Sentinel), hardened: what is on the queue never
takes a worker down.

Anyone who can write to the farm's Redis can push anything onto the encode list. kombu
decodes each item as a message envelope and raises on one that is not: the worker that
took it exits, and a bad envelope that went back to the queue takes down every worker
that starts after it. Here an item that is not JSON, not an envelope, or whose body does
not decode is set aside on REJECTED_KEY with the reason (`encoder-worker` operators read
it there; `redis-cli lrange farm:rejected 0 -1`), logged, and dropped from the queue.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, redis

from encoder_worker.ledger import REJECTED_KEY

logger = logging.getLogger(__name__)

REJECTED_KEPT = 1000  # the newest rejected items kept


def envelope_problem(message: Any) -> str | None:
    """Why message is not a kombu message envelope Celery can take; None when it is."""
    if not isinstance(message, dict):
        return f"a JSON {type(message).__name__}, not a message envelope"
    properties = message.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return "the envelope has no properties with a delivery_tag"
    if not isinstance(message.get("headers", {}), dict):
        return "the envelope's headers are not a JSON object"
    body = message.get("body")
    if not isinstance(body, str):
        return "the envelope's body is not a string"
    encoding = properties.get("body_encoding")
    if encoding == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            return f"the envelope's body is not base64: {exc}"
    elif encoding is not None:
        return f"unknown body_encoding {encoding!r}"
    return None


def set_aside(client: Any, item: str | None, reason: str, *, queue: str) -> None:
    """Keep a rejected item where an operator can see it; never raises."""
    record = json.dumps({"at": time.time(), "queue": queue, "reason": reason,
                         "item": (item or "")[:10_000]})
    logger.error("rejected an item on queue %s: %s", queue, reason)
    try:
        with client.pipeline() as pipe:
            pipe.lpush(REJECTED_KEY, record)
            pipe.ltrim(REJECTED_KEY, 0, REJECTED_KEPT - 1)
            pipe.execute()
    except Exception:
        logger.exception("could not set the rejected item aside on %s", REJECTED_KEY)


class SetsAsideBadItems:
    """Channel mixin: an item that is not JSON is set aside, as if the queue were empty."""

    client: Any

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]
        except json.JSONDecodeError as exc:  # the item is not JSON at all
            set_aside(self.client, exc.doc, f"not JSON: {exc}", queue="?")
            raise Empty() from None

    def _get(self, queue: str, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)  # type: ignore[misc]
        except json.JSONDecodeError as exc:
            set_aside(self.client, exc.doc, f"not JSON: {exc}", queue=queue)
            raise Empty() from None


class DeliversOnlyEnvelopes:
    """Transport mixin: a JSON item that is not a message envelope is set aside."""

    channels: list[Any]

    def _deliver(self, message: Any, queue: str) -> None:
        problem = envelope_problem(message)
        if problem is None:
            super()._deliver(message, queue)  # type: ignore[misc]
            return
        channel = self.channels[0] if self.channels else None
        if channel is not None:
            set_aside(channel.client, json.dumps(message), problem, queue=queue)
        else:
            logger.error("rejected an item on queue %s: %s", queue, problem)


class Channel(SetsAsideBadItems, redis.Channel):
    pass


class Transport(DeliversOnlyEnvelopes, redis.Transport):
    Channel = Channel


# The same over Redis Sentinel: kombu's Sentinel channel finds the master, ours reads.
class SentinelChannel(SetsAsideBadItems, redis.SentinelChannel):
    pass


class SentinelTransport(DeliversOnlyEnvelopes, redis.SentinelTransport):
    Channel = SentinelChannel


# After a failed connection kombu moves on to the next sentinel's address and takes the
# transport from that address's scheme, dropping broker_transport: the scheme names ours.
TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
