"""PostgreSQL URLs: split once, refused when libpq and urllib would read them differently."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from faber_core.engines import (
    AT_AFTER_HOST,
    HOST_PORT_UNPARSABLE,
    PERCENT_ENCODE_HINT,
    at_after_host,
    repeated_parameter,
    unresolvable_host,
    unsafe_url_text,
)
from faber_core.errors import ConfigError

# libpq's connection parameters and the environment variables that carry them to subprocesses.
LIBPQ_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "channel_binding": "PGCHANNELBINDING",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcertmode": "PGSSLCERTMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}
_LIBPQ_ONLY_PARAMS = {
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "fallback_application_name",
    "replication",
    "requiressl",
    "sslpassword",
}
"""libpq's connection parameters that no environment variable carries: the programs faber runs get
them in a service file (:func:`faber_core.postgres.service.settings_service`)."""
_LIBPQ_PARAMS = frozenset(LIBPQ_ENV) | _LIBPQ_ONLY_PARAMS
LIBPQ_FILE_VARIABLES = ("PGSERVICEFILE", "PGSYSCONFDIR")
"""Where libpq looks for its service file, which a ``service`` setting reads."""
WHERE_TO_CONNECT = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "service": "PGSERVICE",
}
"""The settings that choose which database a connection reaches, and libpq's variables for them."""


URL_PREFIXES = ("postgresql://", "postgres://")
_NOT_REPLICATION = frozenset({"off", "false", "no", "0"})
"""libpq's values of ``replication`` for an ordinary session (``on``, ``true``, ``database``, ...: a
replication session, which takes no ordinary query)."""
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The settings whose values libpq checks only as it connects, with the values it takes (its
# "Parameter Key Words"). Checked as the URL is read, a mistyped one is a configuration error
# before anything connects, whichever program would read it first: faber's own sessions set
# their connect_timeout, so connect_timeout=abc failed only pg_dump, after the health check.
_LIBPQ_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "sslcertmode": ("disable", "allow", "require"),
    "sslnegotiation": ("postgres", "direct"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
}
_LIBPQ_INTEGERS = (
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)
_LIBPQ_INTEGER = re.compile(r"\s*[+-]?\d{1,9}\s*")


@dataclass(frozen=True)
class ParsedUrl:
    """A database URL split once: what libpq gets, and what faber reads from it."""

    libpq_url: str
    """The URL without the query parameters libpq does not know (Prisma's ``schema``, ...)."""
    params: dict[str, str]
    """Every query parameter, percent-decoded (libpq does not read ``+`` as a space, nor does faber)."""
    dbname: str | None


def client_refused_parameters(params: Mapping[str, str]) -> list[str]:
    """The URL's query parameters libpq does not know (Prisma's ``schema``): faber drops them
    before connecting, but psql or pg_dump given the URL refuse it ("invalid URI query parameter")."""
    return sorted(name for name in params if name not in _LIBPQ_PARAMS)


def parse_database_url(raw: str, source: str) -> ParsedUrl:
    """Split a PostgreSQL URL, refusing one that does not parse or that urllib and libpq would
    read differently (a password with an unescaped ``@``, ``/``, ``?`` or ``#``).

    The error never quotes the value, nor the parsers' messages, which would quote it.
    """

    def invalid(reason: str) -> ConfigError:
        return ConfigError(
            f"The database URL in {source} is not a valid PostgreSQL URL: {reason}",
            suggestions=[PERCENT_ENCODE_HINT, "Use the form postgresql://USER:PASSWORD@HOST:PORT/DATABASE"],
        )

    if not raw.startswith(URL_PREFIXES):
        raise invalid("it must start with postgresql:// or postgres://")
    problem = unsafe_url_text(raw)
    if problem:
        raise invalid(problem)
    if any(char.isspace() for char in raw):  # libpq refuses it, saying nothing of why
        raise invalid("it contains a space (percent-encoded, %20)")
    try:
        parts = urlsplit(raw)
        if "," not in parts.netloc.rpartition("@")[2]:  # libpq's multi-host form has no single port
            _ = parts.port
    except ValueError:
        raise invalid(HOST_PORT_UNPARSABLE) from None
    if at_after_host(parts):
        raise invalid(AT_AFTER_HOST)
    pairs = [pair for pair in parts.query.split("&") if pair]
    if any("=" not in pair or not _PARAMETER_NAME.fullmatch(pair.partition("=")[0]) for pair in pairs):
        raise invalid("a query parameter is not name=value (a '?' in the password that was not percent-encoded?)")
    repeated = repeated_parameter(pairs)
    if repeated:
        raise invalid(f"the query parameter {repeated} is given twice, with two values (which one was meant?)")
    params = {unquote(key): unquote(value) for key, _, value in (pair.partition("=") for pair in pairs)}
    if params.get("replication", "off").lower() not in _NOT_REPLICATION:
        raise ConfigError(
            f"The database URL in {source} asks for a replication session (replication=), which runs no ordinary "
            "queries: faber could not check, lock, back up or migrate the database through it",
            suggestions=["Remove replication= from the URL"],
        )
    kept = "&".join(pair for pair in pairs if unquote(pair.partition("=")[0]) in _LIBPQ_PARAMS)
    libpq_url = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{kept}" if kept else "")
    try:
        from psycopg.conninfo import conninfo_to_dict

        libpq = conninfo_to_dict(libpq_url)
    except Exception:  # noqa: BLE001 - libpq's message quotes the value
        raise invalid("libpq cannot parse it") from None
    problem = unresolvable_host(libpq.get("host")) or invalid_setting(libpq)
    if problem:
        raise invalid(problem)
    dbname = unquote(parts.path.lstrip("/")) or None
    urllib_view = {
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "dbname": dbname,
    }
    # Where the two parsers disagree, a character needed percent-encoding; ?user=... wins in libpq.
    if any((libpq.get(key) or None) != value for key, value in urllib_view.items() if key not in params):
        raise invalid("the user name, password or database name holds a character that must be percent-encoded")
    return ParsedUrl(libpq_url=libpq_url, params=params, dbname=params.get("dbname") or dbname)


def invalid_setting(libpq_params: Mapping[str, str]) -> str | None:
    """What libpq would refuse as it connects in ``libpq_params``' values (never quoting them), or None."""
    for key, choices in _LIBPQ_CHOICES.items():
        if key in libpq_params and libpq_params[key] not in choices:
            return f"{key} is none of libpq's values ({', '.join(choices)})"
    for key in _LIBPQ_INTEGERS:
        if key in libpq_params and not _LIBPQ_INTEGER.fullmatch(libpq_params[key]):
            return f"{key} is not a whole number"
    ports = (libpq_params.get("port") or "").split(",")
    if any(port.strip() and not (port.strip().isdigit() and 1 <= int(port) <= 65535) for port in ports):
        return "the port is not a number from 1 to 65535"
    return None


def refuse_where_to_connect_from_environment(
    libpq_params: Mapping[str, object], source: str, environ: Mapping[str, str] = os.environ
) -> None:
    """Refuse a URL that leaves where to connect (host, port, database, user, service) to a libpq
    variable set in faber's environment (``PGDATABASE``, ...), or its host or database to the
    entry of a service file it names.

    faber's own connections would take it, but the ORMs' drivers given the URL read their own
    defaults instead (node-postgres falls back to the user's name for the database, Prisma to its
    own): a deploy would check, lock and back up one database and migrate another. So the URL
    alone says where every program connects; the error names the variables, never their values."""
    missing = [key for key in ("host", "dbname") if not libpq_params.get(key) and not libpq_params.get(f"{key}addr")]
    if libpq_params.get("service") and missing:
        raise ConfigError(
            f"The database URL in {source} leaves where to connect to a service file's entry (service= without "
            f"{' and '.join(missing)}): faber's connections would read it, the migration tool's would not",
            suggestions=["Write the host, port, database and user in the URL: postgresql://USER@HOST:PORT/DATABASE"],
        )
    filled = [name for key, name in WHERE_TO_CONNECT.items() if not libpq_params.get(key) and environ.get(name)]
    if filled:
        names = ", ".join(filled)
        raise ConfigError(
            f"The database URL in {source} leaves where to connect to the environment ({names} is set and the URL "
            "does not say it): faber's connections would read it, the migration tool's would not",
            suggestions=[
                "Write the host, port, database and user in the URL: postgresql://USER@HOST:PORT/DATABASE",
                f"Or unset {names} for faber",
            ],
        )
