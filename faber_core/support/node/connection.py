"""Where a Node runner's ORM connects: the connection faber resolved from the URL, never the URL.

The ORMs' URL parsers read a URL differently from libpq and from faber's MySQL parser: TypeORM
drops its query and does not percent-decode the database name, node-postgres ignores libpq's
``?dbname=``, ``?host=``, ``?hostaddr=``, ``?port=`` and ``?user=``, and mysql2 ignores
``?socket=``. A deploy would check, lock and back up one database and migrate another. So a
runner's request carries :func:`runner_connection`: host (or socket), port, user, password,
database and TLS, each as faber's own connections use it, which the runner hands the ORM as
explicit options. A setting the ORM's driver cannot honour as faber does is refused here, before
the runner's first request, with a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faber_core.context import Database
from faber_core.errors import ConfigError, ToolCannotConnect
from faber_core.postgres.sql import refuse_nonstandard_strings

if TYPE_CHECKING:
    from faber_core.engines.mysql import TlsSettings

_PG_REFUSED_VALUES = {
    "gssencmode": ("require",),
    "channel_binding": ("require",),
    "sslnegotiation": ("direct",),
    "sslcertmode": ("require",),
}
"""libpq settings whose value asks for something node-postgres cannot do; their other values change
nothing node-postgres would do differently."""
_PG_REFUSED = {
    "service": "node-postgres reads no service file",
    "requirepeer": "node-postgres cannot check the server process's user on a Unix socket",
    "sslcrldir": "Node's TLS takes a certificate revocation list file (sslcrl=), not a directory",
}
_PG_VERIFYING = ("verify-ca", "verify-full")
_PG_DEFAULT_TLS_FILES = {
    "sslrootcert": "root.crt",
    "sslcert": "postgresql.crt",
    "sslkey": "postgresql.key",
    "sslcrl": "root.crl",
}
"""The files libpq reads from ``~/.postgresql`` when the URL names none."""


def runner_connection(database: Database) -> dict[str, Any]:
    """The connection a runner's ORM opens to ``database``: ``engine``, ``host`` (a host name, an
    address, or a Unix socket: a directory on PostgreSQL, the socket file on MySQL as ``socket``),
    ``port``, ``user``, ``password`` (None: none), ``database`` and ``tls`` (None: the ORM's own
    ``ssl`` option applies). On PostgreSQL these are what faber's own connection used, libpq's
    environment and password file included (so this connects once); on MySQL what the URL says.
    Raises :class:`ConfigError` for a URL the ORM could not follow; worked out once per database."""
    if "runner_connection" not in database.learnt:
        build = _postgres_connection if database.engine.name == "postgresql" else _mysql_connection
        database.learnt["runner_connection"] = build(database)
    return dict(database.learnt["runner_connection"])


def _refused(database: Database, parameter: str, why: str, suggestion: str) -> ConfigError:
    return ConfigError(
        f"The database URL in {database.source} sets {parameter}, which the migration tool's driver cannot follow "
        f"as faber's connections do ({why}): faber would check, lock and back up one connection and migrate "
        "through another",
        suggestions=[suggestion],
    )


def _postgres_connection(database: Database) -> dict[str, Any]:
    params = {key: str(value) for key, value in database.conninfo_params().items() if value not in (None, "")}
    for key, why in _PG_REFUSED.items():
        if key in params:
            raise _refused(database, f"{key}=", why, f"Remove {key}= from the URL for this migration tool")
    for key, values in _PG_REFUSED_VALUES.items():
        if params.get(key) in values:
            raise _refused(
                database,
                f"{key}={params[key]}",
                "node-postgres cannot do it",
                f"Remove {key}= from the URL for this migration tool",
            )
    if database.parsed.schema != "public":
        # Prisma's parameter: faber's lint and estimates judge the tables of that schema, which the
        # ORM, going by its own options, would not migrate.
        raise _refused(
            database,
            f"?schema={database.parsed.schema}",
            "Prisma's parameter, which the ORM does not read",
            "Remove ?schema= from the URL and set the schema in the tool's own options (TypeORM's schema, "
            "Sequelize's searchPath), or in the URL as options=-c search_path=...",
        )
    if any("," in params.get(key, "") for key in ("host", "hostaddr", "port")):
        raise _refused(
            database,
            "several hosts",
            "node-postgres connects to one host and does not try the next",
            "Name one host and port in the URL",
        )
    # Where faber's own connection went and how, with what libpq took from beyond the URL (its
    # default socket directory, PGSSLMODE and the other variables, ~/.pgpass): the ORM goes there
    # the same way. node-postgres alone would go to localhost for a URL without a host, in the
    # clear for libpq's sslmode=prefer, and read neither the variables nor the password file.
    try:
        with database.connect(application_name="faber runner connection") as conn:
            # The ORM's sessions read string literals as this one does (the database's, the role's
            # and the URL's settings): faber reads the SQL they run as PostgreSQL does by default.
            refuse_nonstandard_strings(conn, database.name)
            info, pgconn = conn.info, conn.pgconn
            used = {option.keyword.decode(): option.val.decode() for option in pgconn.info if option.val}
            host, address, encrypted = info.host, info.hostaddr, pgconn.ssl_in_use
            where = {"port": info.port, "user": info.user, "password": info.password or None, "database": info.dbname}
    except database.connect_errors as exc:  # as the ORM's own connection would have failed: exit 3
        details = database.describe_connect_error(exc)
        raise ToolCannotConnect(
            f"Cannot connect to the database {database.source} names: {details}",
            details=details,
            suggestions=["Verify the database is running and reachable", f"Check {database.source}"],
        ) from None
    return {
        "engine": "postgres",
        # The address faber reached (one of several a name resolves to), the name for TLS to verify.
        "host": address or host,
        **where,
        "options": params.get("options"),
        "application_name": params.get("application_name"),
        "tls": _postgres_tls(used, verify_name=host, encrypted=encrypted),
    }


def _postgres_tls(used: dict[str, str], verify_name: str | None, *, encrypted: bool) -> dict[str, Any] | None:
    """The TLS of faber's own connection (``used``: libpq's settings for it), as Node's TLS options:
    ``mode`` ``require`` (encrypted, unverified), ``verify-ca`` or ``verify-full``; None when faber's
    connection was not encrypted (``sslmode`` disable, or a server that offers no TLS to libpq's
    prefer), where the ORM's own ``ssl`` option applies: never less than faber's."""
    if not encrypted:
        return None
    mode = used.get("sslmode", "prefer")
    files = {
        key: _from_faber_s_directory(used.get(key)) or _default_tls_file(default)
        for key, default in _PG_DEFAULT_TLS_FILES.items()
    }
    if mode in ("prefer", "allow"):
        mode = "require"  # libpq encrypted without verifying the server's certificate
    elif mode == "require" and files["sslrootcert"]:
        mode = "verify-ca"  # libpq verifies the server's certificate when it has a CA file, as documented
    return {
        "mode": mode,
        # sslrootcert=system: the system's CAs, which Node's defaults are; otherwise libpq's file alone.
        "ca": None if mode not in _PG_VERIFYING or files["sslrootcert"] == "system" else files["sslrootcert"],
        "cert": files["sslcert"],
        "key": files["sslkey"] if files["sslcert"] else None,
        "crl": files["sslcrl"] if mode in _PG_VERIFYING else None,
        "passphrase": used.get("sslpassword"),
        "servername": verify_name if verify_name and not verify_name.startswith("/") else None,
    }


def _from_faber_s_directory(path: str | None) -> str | None:
    """``path`` as faber's own connection read it, relative to faber's working directory: the
    runner runs in the project's. ``system`` (libpq's word for the system's CAs) stays."""
    return os.path.abspath(path) if path and path != "system" else path


def _default_tls_file(name: str) -> str | None:
    try:
        path = Path.home() / ".postgresql" / name
    except RuntimeError:  # no home directory: libpq reads none either
        return None
    return str(path) if path.is_file() else None


_MYSQL_TLS_MODES = {
    "DISABLED": "disable",
    # With a CA or client certificate in the URL, faber's own connections require TLS (TlsSettings).
    "PREFERRED": "require",
    "REQUIRED": "require",
    "VERIFY_CA": "verify-ca",
    "VERIFY_IDENTITY": "verify-full",
}
"""The URL's ``ssl-mode`` as libpq names the same checks, which the runners read for both engines."""


def _mysql_connection(database: Database) -> dict[str, Any]:
    params = database.conninfo_params()
    socket = _from_faber_s_directory(params.get("unix_socket"))
    return {
        "engine": "mysql",
        "host": None if socket else params["host"],
        "port": None if socket else params["port"],
        "socket": socket,
        "user": params["user"],
        "password": params["password"],
        "database": params["database"],
        # The URL's ?charset=, which faber's sessions use; without one the ORM's own default applies.
        "charset": database.parsed.extra.get("charset"),
        "tls": _mysql_tls(database.parsed.extra["tls"], None if socket else params["host"]),
    }


def _mysql_tls(tls: TlsSettings, host: str | None) -> dict[str, Any] | None:
    """As faber's own connections use TLS (:meth:`TlsSettings.driver_params`): a CA file verifies the
    server's certificate whatever the mode; None without a TLS parameter in the URL (the ORM's own
    ``ssl`` option applies)."""
    if not tls.explicit:
        return None
    mode = _MYSQL_TLS_MODES[tls.mode]
    if mode == "require" and tls.ca:
        mode = "verify-ca"
    files = {
        role: str(Path(path).resolve()) if path else None
        for role, path in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key))
    }
    return {"mode": mode, **files, "crl": None, "passphrase": None, "servername": host}
