"""`--output` values -> destination specs. Pure: no I/O besides checking that TLS files exist,
so every mistake is a usage error reported before the sensor loads.

    relp://HOST:PORT            RELP (rsyslog imrelp): every event acknowledged
    relp+tls://HOST:PORT        RELP over TLS (--tls-ca, --tls-cert, --tls-key)
    redis://HOST:PORT/KEY       Redis Streams XADD with IDs from seq; ?mode=list for RPUSH
    rediss://HOST:PORT/KEY      the same over TLS
    syslog+tls://HOST:PORT      RFC 5425 (octet counting) over TLS: best effort, no acknowledgement
    file:PATH, PATH             append JSON lines (today's --output FILE)
    -                           standard output

Every network destination also takes `?max_size=SIZE` (largest event it accepts, default
8k for RELP and syslog, as rsyslog's default maxMessageSize; 512m for Redis).
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

NETWORK_SCHEMES = ("relp", "relp+tls", "redis", "rediss", "syslog+tls")
TLS_SCHEMES = ("relp+tls", "rediss", "syslog+tls")
# rsyslog's default maxMessageSize (8 KiB) and Redis's proto-max-bulk-len (512 MiB).
DEFAULT_MAX_SIZE = {"relp": 8192, "relp+tls": 8192, "syslog+tls": 8192,
                    "redis": 512 << 20, "rediss": 512 << 20}
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class UsageError(ValueError):
    """A bad --output or delivery option: one line for the user, exit status 2."""


def parse_size(text: str, what: str = "size") -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not m or int(m.group(1)) <= 0:
        raise UsageError(f"{what} {text!r}: give a positive number of bytes, e.g. 65536, 512k, 256m")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class TLSFiles:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Destination:
    scheme: str  # one of NETWORK_SCHEMES, or "file" / "stdout"
    url: str  # as the user wrote it (no credentials are accepted, so it is safe to print)
    host: str | None = None
    port: int | None = None
    key: str | None = None  # Redis key
    mode: str = "stream"  # Redis: stream | list
    path: str | None = None  # file
    max_size: int = 0
    tls: TLSFiles | None = None
    options: dict = field(default_factory=dict, compare=False)

    @property
    def network(self) -> bool:
        return self.scheme in NETWORK_SCHEMES

    @property
    def spool_name(self) -> str:
        """The spool directory name: readable, and unique per URL (a digest of the whole URL,
        so two keys on one server get two spools)."""
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:12]
        safe = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{self.scheme}-{self.host}-{self.port}")
        return f"{safe}-{digest}"


def parse(value: str, tls: TLSFiles | None = None) -> Destination:
    """One --output value. Raises UsageError with a sentence naming the value."""
    if value == "-":
        return Destination("stdout", value)
    if value.startswith("file:"):
        path = value[5:]
        if path.startswith("//"):  # file:///var/log/x.jsonl
            path = path[2:]
        if not path:
            raise UsageError(f"--output {value}: file: needs a path")
        return Destination("file", value, path=path)
    if "://" not in value:
        return Destination("file", value, path=value)  # a bare path: today's behaviour
    try:
        u = urlsplit(value)
        port = u.port
    except ValueError as e:
        raise UsageError(f"--output {value}: {e}") from None
    scheme = u.scheme.lower()
    if scheme not in NETWORK_SCHEMES:
        raise UsageError(f"--output {value}: unknown scheme {scheme!r}; use one of "
                         f"{', '.join(s + '://' for s in NETWORK_SCHEMES)}, file:PATH or a path")
    if u.username or u.password:
        # Credentials on the command line are visible to every user in ps: not accepted.
        raise UsageError(f"--output {value}: credentials in the URL are not supported")
    if not u.hostname:
        raise UsageError(f"--output {value}: the host is missing")
    if port is None:
        raise UsageError(f"--output {value}: the port is missing (e.g. {scheme}://{u.hostname}:"
                         f"{2514 if scheme.startswith('relp') else 6379 if scheme.startswith('redis') else 6514})")
    if port == 0:
        raise UsageError(f"--output {value}: port 0 is not a destination")
    try:
        query = dict(parse_qsl(u.query, keep_blank_values=True, strict_parsing=bool(u.query)))
    except ValueError:
        raise UsageError(f"--output {value}: cannot read the query {u.query!r}") from None
    max_size = DEFAULT_MAX_SIZE[scheme]
    if "max_size" in query:
        max_size = parse_size(query.pop("max_size"), f"--output {value}: max_size")
    key, mode = None, "stream"
    if scheme.startswith("redis"):
        key = u.path.lstrip("/")
        if not key:
            raise UsageError(f"--output {value}: the Redis key is missing (redis://HOST:PORT/KEY)")
        mode = query.pop("mode", "stream")
        if mode not in ("stream", "list"):
            raise UsageError(f"--output {value}: mode must be stream or list, not {mode!r}")
    elif u.path not in ("", "/"):
        raise UsageError(f"--output {value}: {scheme}:// takes no path")
    if query:
        raise UsageError(f"--output {value}: unknown option(s) {', '.join(sorted(query))}")
    host = u.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            raise UsageError(f"--output {value}: {host!r} is not a host name") from None
    return Destination(scheme, value, host=host, port=port, key=key, mode=mode, max_size=max_size,
                       tls=tls if scheme in TLS_SCHEMES else None)


def parse_all(values: list[str] | None, tls_ca: str | None = None, tls_cert: str | None = None,
              tls_key: str | None = None) -> list[Destination]:
    """Every --output plus the TLS options, checked together."""
    for opt, path in (("--tls-ca", tls_ca), ("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not os.access(path, os.R_OK):
            raise UsageError(f"{opt} {path}: not a readable file")
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together (the client certificate and its key)")
    tls = TLSFiles(tls_ca, tls_cert, tls_key)
    dests = [parse(v, tls) for v in (values or [])]
    if not dests:
        dests = [Destination("stdout", "-")]
    if any(x is not None for x in (tls_ca, tls_cert, tls_key)) and \
            not any(d.scheme in TLS_SCHEMES for d in dests):
        raise UsageError("--tls-ca/--tls-cert/--tls-key given but no TLS destination "
                         "(relp+tls://, rediss://, syslog+tls://)")
    seen = set()
    for d in dests:
        ident = (d.scheme, d.path) if d.scheme in ("file", "stdout") else d.url
        if ident in seen:
            raise UsageError(f"--output {d.url} is given twice")
        seen.add(ident)
    return dests
