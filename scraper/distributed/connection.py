"""The Redis client a distributed crawl uses: one Redis, or a Redis Cluster.

Chosen by the settings:

- ``REDIS_URL=redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS,
  ``unix://``): one Redis, as ever;
- ``REDIS_URL=redis+cluster://[[user]:password@]host:port[,host:port...][/]``
  (``rediss+cluster://`` for TLS): a Redis Cluster, found from any of these nodes (one
  reachable node is enough; the client learns the others from CLUSTER SLOTS);
- ``REDIS_CLUSTER_NODES=host:port,host:port``, REDIS_URL unset: the same cluster as
  ``redis+cluster://host:port,host:port``.

The password is the URL's, else REDIS_PASSWORD's (the only way to give one with
REDIS_CLUSTER_NODES, and one that never appears in a URL). Both set and different is an
error rather than a guess. REDIS_PASSWORD is a secret setting: the log never shows it
(scraper/logsetup.py), nor the password of REDIS_URL.

A cluster crawl keeps every Lua script's keys in one hash slot (``{<spider>}:...`` and
``{<spider>:<k>}:...``), all named in KEYS. Keys of two slots in one call are refused:
by Redis ("CROSSSLOT Keys in request don't hash to the same slot") when the client does
not know the slots yet, else by the client before sending (RedisClusterException
"EVALSHA - all keys must map to the same key slot"; CrossSlotTransactionError for a
MULTI). A key a script names itself, not in KEYS, works only while its slot happens to
be on the same master. The cluster client's pipeline sends EVALSHA without loading the
script (NOSCRIPT from a master that has not run it): each script call is its own round
trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    ClusterError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scraper.config import ConfigError
from scraper.stores import redact

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Either client: both have the same commands and ``register_script``.
AnyRedis = Redis | RedisCluster

#: Schemes of REDIS_URL: one Redis, and a cluster.
SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379
#: What every connection gets, to either kind of Redis: a dead Redis fails a call in
#: seconds (the pump then waits and retries), and an idle connection is checked before use.
CONNECTION_OPTIONS: dict[str, Any] = {
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    "health_check_interval": 15,
}

#: Errors that mean "Redis is unreachable for now: wait and retry", from either client:
#:
#: - ConnectionError (refused, reset, AUTH refused mid-outage, LOADING, and the cluster
#:   client's MaxConnectionsError), TimeoutError, and the OSErrors that escape redis-py;
#: - ClusterError: a cluster that cannot serve the slot now. Its subclasses
#:   ClusterDownError ("CLUSTERDOWN The cluster is down": a master marked failed while
#:   ``cluster-require-full-coverage`` is yes, and during a failover) and MasterDownError
#:   ("MASTERDOWN"); ClusterError itself is "TTL exhausted.", when MOVED/ASK/TRYAGAIN
#:   redirections went on for 16 tries (a resharding or failover in progress);
#: - TryAgainError ("TRYAGAIN": keys of a multi-key call mid-migration), should one
#:   escape a pipeline;
#: - SlotNotCoveredError: the client's map has no master for the slot (a failover).
#:
#: Not here: ResponseError and the rest of RedisError (a refused call, a bug), nor
#: RedisClusterException as such, which is also a misuse (a transaction across slots,
#: CrossSlotTransactionError). Its outage case, the whole cluster unreachable when the
#: client looks up the cluster's nodes ("Redis Cluster cannot be connected..."), comes
#: with a ConnectionError or TimeoutError as its cause: ``is_outage`` sees it.
OUTAGE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    TryAgainError,
    SlotNotCoveredError,
    OSError,
)
#: Every error either client raises, for an ``except`` that today names RedisError: the
#: cluster client's RedisClusterException (a cluster it cannot reach or map, keys of two
#: slots in one call or transaction, a script in a pipeline) is not a RedisError.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)


@dataclass(frozen=True)
class RedisTarget:
    """Where the settings say Redis is: one server (``url``) or a cluster (``nodes``)."""

    url: str  # REDIS_URL as given, or redis+cluster://<REDIS_CLUSTER_NODES>
    cluster: bool
    nodes: tuple[tuple[str, int], ...] = ()  # a cluster's startup nodes
    username: str | None = None
    password: str | None = None  # never shown: see __str__ and __repr__
    tls: bool = False
    setting: str = "REDIS_URL"  # the setting to name in an error

    def __str__(self) -> str:
        """The target fit for logs: its password, if any, is ``***``."""
        return redact(self.url)

    def __repr__(self) -> str:
        kind = "cluster" if self.cluster else "single"
        return f"RedisTarget({str(self)!r}, {kind}, from {self.setting})"


def distributed(settings: Mapping[str, Any]) -> bool:
    """Whether the settings ask for a distributed crawl (REDIS_URL or REDIS_CLUSTER_NODES)."""
    return bool(settings.get("REDIS_URL") or settings.get("REDIS_CLUSTER_NODES"))


def redis_target(settings: Mapping[str, Any]) -> RedisTarget | None:
    """The Redis the settings name (REDIS_URL, REDIS_CLUSTER_NODES, REDIS_PASSWORD), or
    None if neither REDIS_URL nor REDIS_CLUSTER_NODES is set. ConfigError (one line, no
    secret) if the values cannot work. ``settings``: Scrapy's Settings, or any mapping."""
    url = str(settings.get("REDIS_URL") or "").strip()
    nodes = str(settings.get("REDIS_CLUSTER_NODES") or "").strip()
    password = str(settings.get("REDIS_PASSWORD") or "") or None
    if url and nodes:
        raise ConfigError(
            "REDIS_CLUSTER_NODES",
            "set REDIS_URL or REDIS_CLUSTER_NODES, not both "
            f"(REDIS_URL={redact(url)!r}, REDIS_CLUSTER_NODES={nodes!r})",
        )
    if nodes:
        if "://" in nodes or "@" in nodes:
            raise ConfigError(
                "REDIS_CLUSTER_NODES",
                "REDIS_CLUSTER_NODES is host:port,host:port (no scheme, no password: "
                "give the password as REDIS_PASSWORD, or use REDIS_URL=redis+cluster://...)",
            )
        return RedisTarget(
            f"redis+cluster://{nodes}",
            cluster=True,
            nodes=_nodes(nodes, "REDIS_CLUSTER_NODES"),
            password=password,
            setting="REDIS_CLUSTER_NODES",
        )
    if not url:
        return None
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in SINGLE_SCHEMES:
        given = _password(url)
        _same_password(given, password, url)
        return RedisTarget(url, cluster=False, password=given or password)
    if scheme not in CLUSTER_SCHEMES:
        known = ", ".join(f"{s}://" for s in (*SINGLE_SCHEMES, *CLUSTER_SCHEMES))
        raise ConfigError(
            "REDIS_URL", f"REDIS_URL={redact(url)!r}: unknown scheme {scheme!r} (use {known})"
        )
    rest = url.split("://", 1)[1]
    location, _, path = rest.partition("/")
    if "?" in location:
        location, _, query = location.partition("?")
        path = f"?{query}"
    userinfo, _, hosts = location.rpartition("@")
    if path.strip("/") not in ("", "0"):
        raise ConfigError(
            "REDIS_URL",
            f"REDIS_URL={redact(url)!r}: a Redis Cluster has no database numbers nor "
            "options: end the URL after the last host:port",
        )
    username, _, given = userinfo.partition(":")
    _same_password(unquote(given) or None, password, url)
    return RedisTarget(
        url,
        cluster=True,
        nodes=_nodes(hosts, "REDIS_URL", url),
        username=unquote(username) or None,
        password=unquote(given) or password,
        tls=scheme == "rediss+cluster",
    )


def connect(target: RedisTarget, **options: Any) -> AnyRedis:
    """A new asyncio client of ``target`` (no connection is made until the first call).
    ``options`` override CONNECTION_OPTIONS and go to the client's constructor."""
    options = {**CONNECTION_OPTIONS, **options}
    if not target.cluster:
        if target.password is not None:
            options["password"] = target.password  # the URL's own wins in from_url
        return Redis.from_url(target.url, **options)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        ssl=target.tls,
        **options,
    )


class CallCount:
    """The round trips a client made: every command and script call (a script's reload
    after NOSCRIPT included), counted at ``execute_command``, the one door of every call
    in both clients. ``distributed/redis_calls``; Redis's own INFO commandstats agrees
    (bench/sites.py prints both)."""

    def __init__(self, client: AnyRedis) -> None:
        self.n = 0
        send = client.execute_command

        async def counted(*args: Any, **options: Any) -> Any:
            self.n += 1
            return await send(*args, **options)

        client.execute_command = counted  # type: ignore[method-assign]


def redis_client(settings: Mapping[str, Any], **options: Any) -> AnyRedis:
    """The asyncio client the settings name (see the module docstring); ConfigError if
    they name none or one that cannot work."""
    target = redis_target(settings)
    if target is None:
        raise ConfigError("REDIS_URL", "REDIS_URL is not set (nor REDIS_CLUSTER_NODES)")
    return connect(target, **options)


def is_cluster(client: object) -> TypeGuard[RedisCluster]:
    """Whether ``client`` is a Redis Cluster client (every key of a call in one slot)."""
    return isinstance(client, RedisCluster)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis is unreachable for now (retry later), not a refusal or
    a bug: one of OUTAGE, or the cluster client's "cannot be connected" caused by one."""
    if isinstance(exc, OUTAGE):
        return True
    return isinstance(exc, RedisClusterException) and isinstance(exc.__cause__, OUTAGE)


def _nodes(text: str, setting: str, url: str = "") -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` as pairs (port 6379 if left out; IPv6 in brackets)."""
    shown = f"{setting}={redact(url or text)!r}"
    nodes = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            parsed = urlsplit(f"//{item}")
            host, port = parsed.hostname, parsed.port or DEFAULT_PORT
        except ValueError as exc:  # a port that is not a number, or out of range
            raise ConfigError(setting, f"{shown}: {item!r} is not host:port ({exc})") from None
        if not host or parsed.path or parsed.username is not None:
            raise ConfigError(setting, f"{shown}: {item!r} is not host:port")
        nodes.append((host, port))
    if not nodes:
        raise ConfigError(setting, f"{shown}: no host:port of a cluster node")
    return tuple(nodes)


def _password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None  # redis-py says what is wrong with the URL when it connects
    return unquote(password) if password else None


def _same_password(given: str | None, password: str | None, url: str) -> None:
    if given and password and given != password:
        raise ConfigError(
            "REDIS_PASSWORD",
            f"REDIS_URL={redact(url)!r} has a password and REDIS_PASSWORD another: give it once",
        )
