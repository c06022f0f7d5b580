"""Redis connections from broker URLs, checked fast: the one place that reads those URLs.

    redis://[:PASSWORD@]HOST[:PORT][/DB]
    rediss://[:PASSWORD@]HOST[:PORT][/DB]?ssl_ca_certs=CA.pem[&ssl_certfile=C&ssl_keyfile=K]
    redis+socket:///PATH/TO/redis.sock
    sentinel://[:PASSWORD@]HOST[:PORT];sentinel://HOST[:PORT];...[/DB]?master_name=NAME
        [&sentinel_password=SENTINELS_PASSWORD]

Every client of the farm's Redis (the recorder, Celery's broker and result backend, the
ledger) connects with what parse_redis_url() read, so they all honour a URL the same way.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlparse, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

T = TypeVar("T")

SOCKET_SCHEMES = ("redis+socket://", "socket://", "unix://")
REDIS_PORT = 6379
SENTINEL_PORT = 26379
TLS_PARAMETERS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
                  "ssl_check_hostname")
SENTINEL_PARAMETERS = ("master_name", "sentinel_password")
SECRET_PARAMETERS = ("sentinel_password",)
# How long the farm's clients wait for a Redis that went away before a call fails: longer
# than a Sentinel failover (down-after-milliseconds, 30 s by default, then the election),
# so a failover costs the farm time, never a job.
RIDE_OUT_S = 60.0
RETRY_INTERVAL_S = 0.5  # between tries
# Celery's spellings (CERT_REQUIRED) too, so a URL written for Celery reads the same here.
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL,
             "none": ssl.CERT_NONE}
URL_FORMS = {
    "redis": "redis://:PASSWORD@host:port/db",
    "rediss": "rediss://:PASSWORD@host:port/db?ssl_ca_certs=/path/to/ca.pem",
    "sentinel": "sentinel://:PASSWORD@host:26379;sentinel://host2:26379/db?master_name=NAME",
    "socket": "redis+socket:///path/to/redis.sock",
}


class BrokerUnreachable(Exception):
    """The broker did not answer; the message says where and what to check."""


@dataclass(frozen=True)
class RedisUrl:
    """A broker URL as read: what every client of the farm's Redis connects with."""

    scheme: str  # redis, rediss (TLS), socket or sentinel
    hosts: tuple[tuple[str, int], ...] = ()  # the server, or the sentinels
    db: int = 0
    username: str | None = None
    password: str | None = None  # Redis's own: the master's and replicas' with Sentinel
    socket_path: str | None = None
    tls: Mapping[str, Any] = field(default_factory=dict)  # redis-py's ssl_* arguments
    master_name: str | None = None
    sentinel_password: str | None = None  # the sentinels' own requirepass

    def celery_url(self) -> str:
        """The URL Celery and kombu get: without the parameters they take as settings
        (TLS, master name, sentinel password), which would reach redis-py unread."""
        if self.scheme == "socket":
            return f"redis+socket://{self.socket_path}"
        auth = ""
        if self.password is not None or self.username is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        # Credentials on every sentinel address: kombu moves on to the next address after
        # a failed connection and reads the credentials from that one.
        return ";".join(f"{self.scheme}://{auth}{_host(host)}:{port}/{self.db}"
                        for host, port in self.hosts)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_redis_url(url: str) -> RedisUrl:
    """Read a broker URL.

    Raises:
        ValueError: the URL is not one of the forms above; the message says what to write.
    """
    if url.startswith(SOCKET_SCHEMES):
        return RedisUrl("socket", socket_path=unquote(urlparse(url).path))
    if url.startswith("sentinel://"):
        return _parse_sentinel_url(url)
    if url.startswith(("redis://", "rediss://")):
        return _parse_server_url(url)
    raise ValueError(f"broker {redact(url)!r} is not a Redis URL: use "
                     f"{URL_FORMS['redis']}, {URL_FORMS['rediss']} or {URL_FORMS['sentinel']}")


def _parse_server_url(url: str) -> RedisUrl:
    parts = _split(url)
    scheme = parts.scheme
    allowed = TLS_PARAMETERS if scheme == "rediss" else ()
    query = _query(parts.query, url, allowed=allowed)
    return RedisUrl(scheme, ((parts.hostname or "localhost", _port(parts, url, REDIS_PORT)),),
                    db=_db(parts.path, url), username=_unquoted(parts.username),
                    password=_unquoted(parts.password),
                    tls=_tls_options(query, url) if scheme == "rediss" else {})


def _parse_sentinel_url(url: str) -> RedisUrl:
    addresses = [_sentinel_address(address, url) for address in url.split(";")]
    query: dict[str, str] = {}
    for parts in addresses:
        query |= _query(parts.query, url, allowed=SENTINEL_PARAMETERS)
    if not query.get("master_name"):
        raise ValueError(f"broker {redact(url)} names no master: add ?master_name=NAME, the "
                         "name in the sentinels' `sentinel monitor NAME ...` line")
    return RedisUrl(
        "sentinel", tuple((p.hostname or "", _port(p, url, SENTINEL_PORT)) for p in addresses),
        db=_agreed(url, "database", {_db(p.path, url) for p in addresses if p.path.strip("/")})
        or 0,
        username=_agreed(url, "user", {_unquoted(p.username) for p in addresses} - {None}),
        password=_agreed(url, "password", {_unquoted(p.password) for p in addresses} - {None}),
        master_name=query["master_name"],
        sentinel_password=query.get("sentinel_password") or None)


def _sentinel_address(address: str, url: str) -> SplitResult:
    if not address.startswith("sentinel://"):
        raise ValueError(f"broker {redact(url)}: every address of a Sentinel URL starts with "
                         f"sentinel://, separated by ';': {URL_FORMS['sentinel']}")
    parts = _split(address)
    if not parts.hostname:
        raise ValueError(f"broker {redact(url)}: a sentinel address names no host")
    return parts


def _agreed(url: str, what: str, values: set[T]) -> T | None:
    """The one value the sentinel addresses give (written once, or the same on each)."""
    if len(values) > 1:
        raise ValueError(f"broker {redact(url)}: the sentinel addresses name different "
                         f"{what}s; write it once")
    return next(iter(values), None)


def _query(text: str, url: str, *, allowed: tuple[str, ...]) -> dict[str, str]:
    query = dict(parse_qsl(text, keep_blank_values=True))
    unknown = sorted(set(query) - set(allowed))
    if not unknown:
        return query
    name = unknown[0]
    if name in TLS_PARAMETERS and url.startswith("sentinel://"):
        raise ValueError(f"broker {redact(url)}: {name}: TLS through Sentinel is not "
                         "supported; use rediss:// to the master, or Sentinel without TLS")
    if name in TLS_PARAMETERS:
        raise ValueError(f"broker {redact(url)}: {name} is for TLS, which needs a rediss:// "
                         "URL")
    raise ValueError(f"broker {redact(url)}: unknown parameter {name!r}; this URL takes "
                     f"{', '.join(allowed) or 'none'}")


def _tls_options(query: dict[str, str], url: str) -> dict[str, Any]:
    """redis-py's SSLConnection arguments; kombu and Celery pass the same dict on."""
    spelled = query.get("ssl_cert_reqs", "required")
    cert_reqs = CERT_REQS.get(spelled.lower().removeprefix("cert_"))
    if cert_reqs is None:
        raise ValueError(f"broker {redact(url)}: ssl_cert_reqs={spelled}: use required, "
                         "optional or none")
    verify = cert_reqs != ssl.CERT_NONE
    check_hostname = query.get("ssl_check_hostname", str(verify)).lower() in ("true", "1", "yes")
    if check_hostname and not verify:
        raise ValueError(f"broker {redact(url)}: ssl_check_hostname=true needs a verified "
                         "certificate: leave out ssl_cert_reqs=none")
    options: dict[str, Any] = {"ssl_cert_reqs": cert_reqs, "ssl_check_hostname": check_hostname}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in query:
            if not Path(query[name]).is_file():
                raise ValueError(f"broker {redact(url)}: {name}={query[name]}: no such file")
            options[name] = query[name]
    return options


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # a broken IPv6 address
        raise ValueError(f"broker {redact(url)}: {exc}") from None


def _port(parts: SplitResult, url: str, default: int) -> int:
    try:
        return int(parts.port or default)
    except ValueError as exc:  # out of range, or not a number
        raise ValueError(f"broker {redact(url)}: {exc}") from None


def _db(path: str, url: str) -> int:
    number = path.strip("/") or "0"
    if not number.isdigit():
        raise ValueError(f"broker {redact(url)}: the database {number!r} is not a number")
    return int(number)


def _unquoted(text: str | None) -> str | None:
    return unquote(text) if text else None  # redis://:PASSWORD@ has an empty user name


class RidesOutOutages(redis.Redis):
    """A client whose commands wait for a Redis that went away (a restart, a failover):
    each is tried again every RETRY_INTERVAL_S, on a connection from the pool (which asks
    the sentinels anew), until ride_out_s have passed. Pipelines are not."""

    ride_out_s = 0.0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        deadline = time.monotonic() + self.ride_out_s
        while True:
            try:
                return super().execute_command(*args, **options)
            except redis.AuthenticationError:
                raise  # a wrong password does not come right by waiting
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() + RETRY_INTERVAL_S > deadline:
                    raise
                time.sleep(RETRY_INTERVAL_S)


def redis_client(url: str, *, timeout_s: float = 5.0,
                 ride_out_s: float = RIDE_OUT_S) -> RidesOutOutages:
    """A redis-py client for a broker URL (the master's, with Sentinel), with connect and
    read timeouts, whose commands wait up to ride_out_s for a Redis that went away.

    Raises:
        ValueError: not a broker URL this farm reads.
    """
    parsed = parse_redis_url(url)
    # redis-py's own retries would try the same address again: ours go through the pool.
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                               "retry": Retry(NoBackoff(), 0)}
    if parsed.scheme == "socket":
        client = RidesOutOutages(unix_socket_path=parsed.socket_path, **options)
    elif parsed.scheme == "sentinel":
        assert parsed.master_name is not None
        sentinels = Sentinel(list(parsed.hosts), sentinel_kwargs=sentinel_kwargs(parsed, options),
                             **options)
        client = sentinels.master_for(parsed.master_name, redis_class=RidesOutOutages,
                                      db=parsed.db, username=parsed.username,
                                      password=parsed.password)
    else:
        (host, port), = parsed.hosts
        tls: dict[str, Any] = {"ssl": True, **parsed.tls} if parsed.scheme == "rediss" else {}
        client = RidesOutOutages(host=host, port=port, db=parsed.db, username=parsed.username,
                                 password=parsed.password, **options, **tls)
    client.ride_out_s = ride_out_s
    return client


def sentinel_kwargs(parsed: RedisUrl, options: Mapping[str, Any]) -> dict[str, Any]:
    """How to talk to the sentinels themselves (their own password, if they have one)."""
    kwargs: dict[str, Any] = dict(options)
    if parsed.sentinel_password is not None:
        kwargs["password"] = parsed.sentinel_password
    return kwargs


def check_broker(url: str, *, timeout_s: float = 5.0) -> None:
    """Ping the broker once (with Sentinel: ask the sentinels first, then the master).

    Raises:
        BrokerUnreachable: no answer within timeout_s, or a refused password or certificate;
            the message says which and what to change.
        ValueError: not a broker URL this farm reads.
    """
    parsed = parse_redis_url(url)
    if parsed.scheme == "sentinel":
        _check_sentinels(parsed, url, timeout_s)
    client = redis_client(url, timeout_s=timeout_s, ride_out_s=0)  # a check does not wait
    form = URL_FORMS[parsed.scheme]
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise BrokerUnreachable(
            f"the broker at {redact(url)} refused the password ({exc}): put Redis's password "
            f"in the URL, {form}"
        ) from exc
    except redis.ResponseError as exc:  # NOAUTH: Redis wants a password, none was given
        raise BrokerUnreachable(
            f"the broker at {redact(url)} answered {exc}: put Redis's password in the URL, "
            f"{form}"
        ) from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise BrokerUnreachable(_connection_problem(parsed, url, exc, timeout_s)) from exc
    finally:
        client.close()


def _connection_problem(parsed: RedisUrl, url: str, exc: BaseException,
                        timeout_s: float) -> str:
    cause = _root_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (f"the broker at {redact(url)} sent a TLS certificate that cannot be verified "
                f"({cause.verify_message}): pass the CA certificate that signed it, "
                f"{URL_FORMS['rediss']}")
    if isinstance(cause, ssl.SSLError):
        return (f"the broker at {redact(url)} refused the TLS connection ({cause}): if it "
                "checks client certificates (Redis's tls-auth-clients), pass one its CA "
                "signed, ?ssl_certfile=/path/to/client.pem&ssl_keyfile=/path/to/client.key")
    hint = ""
    if parsed.scheme == "redis" and isinstance(cause, ConnectionResetError):
        hint = " (a Redis that speaks TLS wants rediss://)"
    return (f"cannot reach the broker at {redact(url)} within {timeout_s:g}s ({exc}); is Redis "
            f"running there, and is the URL right?{hint}")


def _root_cause(exc: BaseException) -> BaseException:
    """The first error in exc's chain: redis-py wraps socket and TLS errors."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


def _check_sentinels(parsed: RedisUrl, url: str, timeout_s: float) -> None:
    """Raise BrokerUnreachable unless a sentinel names the master; says what each answered."""
    answers: dict[str, list[str]] = {}
    for host, port in parsed.hosts:
        problem = _sentinel_problem(parsed, host, port, timeout_s)
        if problem is None:
            return
        answers.setdefault(problem, []).append(f"{_host(host)}:{port}")
    said = "; ".join(f"{', '.join(where)} {problem}" for problem, where in answers.items())
    raise BrokerUnreachable(f"no sentinel of the broker {redact(url)} names the master "
                            f"{parsed.master_name!r}: {said}")


def _sentinel_problem(parsed: RedisUrl, host: str, port: int, timeout_s: float) -> str | None:
    """What is wrong with asking this sentinel for the master; None: it names one."""
    timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    # Asked once: each sentinel's answer is the diagnosis, retries only delay it.
    client = redis.Redis(host=host, port=port, retry=Retry(NoBackoff(), 0),
                         **sentinel_kwargs(parsed, timeouts))
    try:
        if client.sentinel_get_master_addr_by_name(parsed.master_name) is not None:
            return None
        return ("know no such master: master_name must be the name in the sentinels' "
                "`sentinel monitor NAME ...` line")
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        if not isinstance(exc, redis.AuthenticationError) and "NOAUTH" not in str(exc):
            return f"answered {exc}"
        return (f"refused the sentinel password ({exc}): put the sentinels' own password "
                "(their requirepass) in the URL, ?sentinel_password=PASSWORD")
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        return f"did not answer within {timeout_s:g}s ({exc})"
    finally:
        client.close()


def redact(url: str | None) -> str | None:
    """The URL without its passwords: logs and results files get shared."""
    if url is None:
        return None
    return ";".join(_redact_address(address) for address in url.split(";"))


def _redact_address(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # unreadable (a broken IPv6 address): show nothing of it
        return "(an unreadable URL)"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:***@{hostport}" if at and ":" in userinfo \
        else parts.netloc
    query = "&".join(f"{name}=***" if (name := pair.partition("=")[0]) in SECRET_PARAMETERS
                     else pair for pair in parts.query.split("&"))
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing to hide: exactly as written
    return urlunsplit(parts._replace(netloc=netloc, query=query))
