"""The passwords libpq reads from files when the URL has none, so that faber's redactor knows them.

libpq takes a connection's password from, in this order: the URL; the entry of the service the URL
names (``?service=``) in the service file; ``PGPASSWORD``; the first line of the password file
(``?passfile=``, ``PGPASSFILE`` or ``~/.pgpass``) that matches the host, port, database and user.
faber, pg_dump, pg_restore and psql all read the same files, so a password from one of them can
reach the database's error messages, the programs' output or a migration's printout like the
URL's own: :func:`passwords_from_files` finds it, read as libpq reads it, to be masked the same way.
A file that faber cannot read is a :class:`~faber_core.errors.ConfigError` naming it, never quoting it.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Mapping
from pathlib import Path

from faber_core.errors import ConfigError
from faber_core.migration_files import read_regular_file

PASSWORD_FILE = "password file"
SERVICE_FILE = "service file"
MAX_FILE_BYTES = 16 * 1024**2
"""The largest password or service file faber reads, held in memory whole: such a file holds a few
lines, and a larger one (a sparse file of 8 GiB) would exhaust faber's memory."""
DEFAULT_PORT = "5432"
LOCALHOST = "localhost"
"""The host name a password file line matches for a connection through a Unix socket (libpq's
default socket directory, which depends on how libpq was built, or no host at all)."""


def passwords_from_files(params: Mapping[str, object], environ: Mapping[str, str] = os.environ) -> list[str]:
    """The passwords libpq takes from the service file or the password file for a connection with
    the URL's ``params`` (libpq's keywords): none when the URL or ``PGPASSWORD`` gives one. A
    password file open to other users is read too, though libpq ignores it: masking its password
    costs nothing."""
    settings = {key: str(value) for key, value in params.items() if value is not None and value != ""}
    if settings.get("password"):
        return []
    if "service" in settings:
        entry = service_entry(settings["service"], environ)
        settings = {**entry, **settings}  # the URL's own settings win over the service's
        if settings.get("password"):
            return [settings["password"]]
    if environ.get("PGPASSWORD"):
        return []
    home = _home(environ)
    passfile = settings.get("passfile") or environ.get("PGPASSFILE") or (f"{home}/.pgpass" if home else None)
    lines = _read_lines(Path(passfile), PASSWORD_FILE) if passfile else None
    # Without a user name (none in the URL, the account unknown) libpq cannot connect at all.
    account = _account()
    user = settings.get("user") or (account.pw_name if account else None)
    if lines is None or user is None:
        return []
    hosts = (settings.get("host") or settings.get("hostaddr") or "").split(",")
    ports = (settings.get("port") or "").split(",")
    found = []
    for number, host in enumerate(hosts):
        port = (ports[number] if len(ports) == len(hosts) else ports[0]) or DEFAULT_PORT
        # A socket directory matches its own path or "localhost", as libpq was built: both are learnt.
        names = {host or LOCALHOST} | ({LOCALHOST} if host.startswith("/") else set())
        found += [password for name in names for password in _server_passwords(lines, name, port, user)]
    return found


def _home(environ: Mapping[str, str]) -> str | None:
    account = _account()
    return environ.get("HOME") or (account.pw_dir if account else None)


def _account() -> pwd.struct_passwd | None:
    """The account faber runs as, as libpq looks it up; None in a container that lists no entry for it."""
    try:
        return pwd.getpwuid(os.geteuid())
    except KeyError:
        return None


def _read_lines(path: Path, kind: str) -> list[str] | None:
    """The file's lines, or None when libpq reads none: the file does not exist, or it is a password
    file that is not a regular file (a device such as /dev/zero or /dev/null, a directory), which
    libpq skips, warning of it itself when it connects. A password file that is a FIFO is refused:
    libpq opens it before it looks at its type, and waits there for a writer. A service file that
    is not a regular file is refused unread: a FIFO would wait for a writer, a device never ends."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"Cannot read the PostgreSQL {kind} {path}: {exc.strerror}") from None
    if kind == PASSWORD_FILE and stat.S_ISFIFO(mode):
        raise ConfigError(
            f"The PostgreSQL password file {path} is a FIFO: connecting would wait for a writer",
            suggestions=[f"Make {path} a regular file, or point PGPASSFILE (or ?passfile=) at one"],
        )
    if kind == PASSWORD_FILE and not stat.S_ISREG(mode):
        return None
    data = read_regular_file(path, f"The PostgreSQL {kind} {path}", MAX_FILE_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"The PostgreSQL {kind} {path} is not UTF-8 text (line {line})",
            suggestions=[f"Save {path} as UTF-8"],
        ) from None
    return [line.rstrip("\r") for line in text.split("\n")]


def _server_passwords(lines: list[str], host: str, port: str, user: str) -> list[str]:
    """The passwords of the ``host:port:database:user:password`` lines for ``user`` on the server,
    whatever their database: faber connects to other databases there too (a rehearsal's copy, the
    maintenance database of a restore), each with the first line matching it. ``*`` matches
    anything, ``\\`` escapes a ``:`` or a ``\\``, and a line starting with ``#`` is a comment."""
    found = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        fields = _fields(line)
        if len(fields) < 5:
            continue
        line_host, line_port, _database, line_user, password = fields[:5]
        if all(field in ("*", value) for field, value in ((line_host, host), (line_port, port), (line_user, user))):
            found.append(password)
    return found


def _fields(line: str) -> list[str]:
    fields, current, escaped = [], [], False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def service_entry(service: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The settings of ``service`` in the first service file holding it: ``PGSERVICEFILE`` (or
    ``~/.pg_service.conf``), then ``pg_service.conf`` in ``PGSYSCONFDIR``."""
    home = _home(environ)
    files = [Path(environ["PGSERVICEFILE"])] if environ.get("PGSERVICEFILE") else []
    if not files and home:
        files.append(Path(home) / ".pg_service.conf")
    if environ.get("PGSYSCONFDIR"):
        files.append(Path(environ["PGSYSCONFDIR"]) / "pg_service.conf")
    for path in files:
        lines = _read_lines(path, SERVICE_FILE)
        entry = None if lines is None else _section(lines, service, path)
        if entry is not None:
            return entry
    return {}


def _section(lines: list[str], service: str, path: Path) -> dict[str, str] | None:
    """The ``key=value`` lines under ``[service]``, or None when the file has no such section."""
    entry: dict[str, str] | None = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if entry is not None:
                break
            if line.startswith(f"[{service}]"):
                entry = {}
        elif entry is not None:
            key, equals, value = line.partition("=")
            if not equals:
                raise ConfigError(
                    f"The PostgreSQL service file {path} has a line that is not key=value (line {number}, "
                    f"in service {service})",
                    suggestions=[f"Write each setting of [{service}] as key=value, e.g. sslmode=verify-full"],
                )
            entry.setdefault(key, value)
    return entry
