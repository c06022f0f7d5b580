"""Redis connections from broker URLs (redis://, rediss://, redis+socket://), checked fast."""

from __future__ import annotations

from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

import redis


class BrokerUnreachable(Exception):
    """The broker did not answer; the message says where and what to check."""


def redis_client(url: str, *, timeout_s: float = 5.0) -> redis.Redis:
    """A redis-py client for a broker URL, with connect and read timeouts."""
    if url.startswith(("redis+socket://", "socket://", "unix://")):
        parsed = urlparse(url)
        return redis.Redis(
            unix_socket_path=unquote(parsed.path), socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
    if not url.startswith(("redis://", "rediss://")):
        raise ValueError(f"broker {redact(url)!r} is not a Redis URL (redis://host:port/db)")
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def check_broker(url: str, *, timeout_s: float = 5.0) -> None:
    """Ping the broker once.

    Raises:
        BrokerUnreachable: no answer within timeout_s.
    """
    client = redis_client(url, timeout_s=timeout_s)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise BrokerUnreachable(
            f"the broker at {redact(url)} refused the password ({exc}): put Redis's password "
            "in the URL, redis://:PASSWORD@host:port/db"
        ) from exc
    except redis.ResponseError as exc:  # NOAUTH: Redis wants a password, none was given
        raise BrokerUnreachable(
            f"the broker at {redact(url)} answered {exc}: put Redis's password in the URL, "
            "redis://:PASSWORD@host:port/db"
        ) from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise BrokerUnreachable(
            f"cannot reach the broker at {redact(url)} within {timeout_s:g}s ({exc}); "
            "is Redis running there, and is the URL right?"
        ) from exc
    finally:
        client.close()


def redact(url: str | None) -> str | None:
    """The URL without its password: logs and results files get shared."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
