"""The PostgreSQL store's URL: what asyncpg is given, what is shown, the schema and the connect timeout."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["parse_url", "reason"]

_DEFAULT_CONNECT_TIMEOUT: Final = 10.0


def reason(exc: BaseException, timeout: float) -> str:
    """Why the server could not be reached, in words for a ``StoreUnavailableError``."""
    if isinstance(exc, TimeoutError):
        return f"no answer from the server within {timeout:g} s (raise `?connect_timeout=`)."
    text = str(exc).strip() or "no detail"
    return f"{type(exc).__name__}: {text}"


def _check_ports(url: str, netloc: str) -> None:
    """Refuse a port that is not a number from 1 to 65535, in any ``host:port`` of the URL."""
    hosts = netloc.rpartition("@")[2]
    for host in hosts.split(","):
        port = host.rpartition("]")[2] if host.startswith("[") else host
        if ":" not in port:
            continue
        text = port.rpartition(":")[2]
        if text:  # `host:` is the default port
            _check_port(url, text)


def _check_port(url: str, text: str) -> None:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise ValueError(
            f"PostgreSQL store URL {url!r}: port {text!r} is not a number from 1 to 65535; write e.g. "
            "'postgresql://user@host:5432/db'."
        )


def parse_url(url: str) -> tuple[str, str, str, float]:
    """(asyncpg's DSN, the URL without password, schema, connect timeout) of a ``postgresql://`` URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres") or not parts.netloc:
        raise ValueError(f"A PostgreSQL store URL looks like 'postgresql://user@host:5432/db', got {url!r}.")
    _check_ports(url, parts.netloc)
    schema = "public"
    timeout = _DEFAULT_CONNECT_TIMEOUT
    passed: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            if not value:
                raise ValueError(f"PostgreSQL store URL {url!r}: `schema=` needs a name.")
            schema = value
        elif key == "connect_timeout":
            try:
                timeout = float(value)
            except ValueError:
                timeout = 0.0
            if not timeout > 0:
                raise ValueError(f"PostgreSQL store URL {url!r}: connect_timeout={value!r} is not a positive number.")
        else:
            if key == "port":
                for text in value.split(","):
                    _check_port(url, text)
            passed.append((key, value))
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(passed), ""))
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    public_query = urlencode(
        [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"], safe="/:"
    )
    public = urlunsplit((parts.scheme, netloc, parts.path, public_query, ""))
    return dsn, public, schema, timeout
