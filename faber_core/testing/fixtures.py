"""pytest fixtures for faber and its plugins, for the test suites that ask for them.

Installing faber adds nothing to a project's pytest session; a plugin's tests opt in, in their
top-level ``conftest.py``::

    pytest_plugins = ["faber_core.testing.fixtures"]

(or ``pytest -p faber_core.testing.fixtures``). The test databases are named
``<faber_database_prefix>_<random>``; the ini option ``faber_database_prefix`` (default
``faber_test``) tells them apart from other suites' on a shared server.

- ``postgres_admin_url``: a real PostgreSQL for the test session: the server at
  127.0.0.1:5432 when one answers (or ``FABER_TEST_ADMIN_URL``), otherwise an embedded one.
- ``database_url``: a fresh, empty database for one test, created while the test before it ran
  (:class:`_FreshDatabases`) and dropped afterwards (in the background: :func:`discard_database`).
- ``faber_project``: a project directory with a faber config, built from a dict.
- ``run_faber``: runs the ``faber`` command in a subprocess and parses ``--json`` output.
- ``plugin_manager``: a PluginManager with only the built-in plugins, for registering test plugins.
- ``run_context``: a RunContext on a project; ``query``: run SQL on the test's database.
- ``mysql_admin_url``: the MySQL/MariaDB at 127.0.0.1:3306 as root without a password (or
  ``FABER_TEST_MYSQL_ADMIN_URL``); the tests asking for it skip, saying why, when none answers.
- ``mysql_database_url``: a fresh MySQL database for one test and a user of its own whose
  password is the canary, both dropped afterwards; ``mysql_query``: run SQL on it.

Helpers for tests that kill faber: :func:`start_faber` (a faber process to signal),
:func:`wait_for` (poll a condition), :func:`process_alive` (Linux: running, not a zombie),
:func:`database_state` (what a PostgreSQL restore must reproduce, to compare before and after).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from faber_core.testing.forked import can_fork_with, run_faber_forked

CANARY_PASSWORD = "canary-Pw-7f3a9c1e"
LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE_PREFIX_OPTION = "faber_database_prefix"
DEFAULT_DATABASE_PREFIX = "faber_test"
TEST_SESSION = "faber tests"
"""``application_name`` of a test's own sessions of a database a restore in place runs on: one
that holds the restore back midway (an advisory lock a restored table's check waits on), one that
watches it. The restore ends every session of the database but faber's own (named ``faber…``)
before it changes anything: the application's."""
# A database name is at most 63 bytes: the prefix, "_" and 12 random hex digits.
_DATABASE_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,49}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        DATABASE_PREFIX_OPTION,
        "prefix of the databases the database_url fixture creates (lower-case letters, digits, _; "
        "at most 50 characters)",
        default=DEFAULT_DATABASE_PREFIX,
    )


def pytest_configure(config: pytest.Config) -> None:
    prefix = config.getini(DATABASE_PREFIX_OPTION)
    if not _DATABASE_PREFIX.fullmatch(prefix):
        raise pytest.UsageError(
            f"{DATABASE_PREFIX_OPTION} = {prefix!r}: use lower-case letters, digits and _, "
            "starting with a letter or _, at most 50 characters"
        )


def _reachable(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser URL of a running PostgreSQL server."""
    configured = os.environ.get("FABER_TEST_ADMIN_URL")
    if configured:
        yield configured
    elif _reachable(LOCAL_SERVER_URL):
        yield LOCAL_SERVER_URL
    else:
        from faber_core.postgres.embedded import start_embedded_server

        yield start_embedded_server(tmp_path_factory.mktemp("embedded-pg"))
    # Before the embedded server stops: the databases the tests discarded, and the one made ready
    # for a test that did not come, are dropped on it.
    _fresh.discard_unused()
    failures = _discards.drain()
    if failures:
        pytest.fail("Could not drop the test databases: " + "; ".join(failures), pytrace=False)


def create_database(admin_url: str, prefix: str = DEFAULT_DATABASE_PREFIX) -> str:
    """Create an empty database on the admin URL's server and return its name."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class _BackgroundDrops:
    """The databases tests are done with, dropped on threads of their own.

    PostgreSQL makes every DROP DATABASE wait for a checkpoint, which writes out every buffer the
    server holds dirty: on a server where other tests keep creating databases (each new one is a
    thousand dirty buffers) that is up to a second per drop, which the test that is done need not
    wait for. Drops running together share a checkpoint. The session waits for them before the
    server can stop (``postgres_admin_url``)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test database drops")
        self._drops: list[tuple[str, str, Future[None]]] = []

    def add(self, admin_url: str, name: str) -> None:
        self._drops.append((admin_url, name, self._pool.submit(drop_database, admin_url, name)))

    def drain(self) -> list[str]:
        """Wait until every database added so far is dropped; the ones that could not be, and why.

        A drop that failed is tried once more here: it ran while some test ran, under that test's
        environment (a PGSSLMODE it set for libpq, say), as :class:`_FreshDatabases` says of a
        database made ready meanwhile."""
        drops, self._drops = self._drops, []
        failures = []
        for admin_url, name, drop in drops:
            if drop.exception() is None:
                continue
            try:
                drop_database(admin_url, name)
            except Exception as again:  # noqa: BLE001 - reported with the others, as the first failure was
                failures.append(f"{name}: {again}")
        return failures


_discards = _BackgroundDrops()


def discard_database(admin_url: str, name: str) -> None:
    """Drop a PostgreSQL database this test is done with, without waiting for it (see
    :class:`_BackgroundDrops`): for cleanup only, never where the test goes on to use the name.
    Needs the ``postgres_admin_url`` fixture in the session, which waits for the drops at its end."""
    _discards.add(admin_url, name)


class _FreshDatabases:
    """The next test's database, created while the current test runs.

    A CREATE DATABASE writes out a copy of ``template1`` (a thousand pages) and waits for it to
    reach the disk: 100 to 500 ms here, mostly waiting, which the test need not spend. Each test
    still gets a database of its own that nothing used before it; the last one made ready, which no
    test took, is dropped with the others when the session ends (``postgres_admin_url``)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test database creates")
        self._next: tuple[str, str, Future[str]] | None = None

    def take(self, admin_url: str, prefix: str) -> str:
        """A new database on ``admin_url`` named with ``prefix``; another is created for the next test."""
        ready, self._next = self._next, None
        if ready is not None and ready[:2] != (admin_url, prefix):
            self._discard(ready)
            ready = None
        if ready is None:
            ready = (admin_url, prefix, self._pool.submit(create_database, admin_url, prefix))
        self._next = (admin_url, prefix, self._pool.submit(create_database, admin_url, prefix))
        if ready[2].exception() is None:
            return ready[2].result()
        # It was created while another test ran, under that test's environment (a PGSSLMODE it
        # set for libpq, say): this test's own attempt decides.
        return create_database(admin_url, prefix)

    def discard_unused(self) -> None:
        """Drop (:func:`discard_database`) the database made ready for a test that did not come."""
        ready, self._next = self._next, None
        if ready is not None:
            self._discard(ready)

    @staticmethod
    def _discard(ready: tuple[str, str, Future[str]]) -> None:
        admin_url, _, created = ready
        if created.exception() is None:  # one that could not be created is no test's failure
            discard_database(admin_url, created.result())


_fresh = _FreshDatabases()


def rehearsal_databases_of(url: str) -> list[str]:
    """The rehearsal databases (``faber_rehearsal_*``) of the PostgreSQL database at ``url`` that
    exist: those whose comment names it (``rehearsal_comment``)."""
    from urllib.parse import urlsplit

    import psycopg

    from faber_core.engines import REHEARSAL_PREFIX

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)"
            " AND shobj_description(oid, 'pg_database') LIKE %s",
            [REHEARSAL_PREFIX, f"%{name}%"],
        ).fetchall()
    return [datname for (datname,) in rows]


def database_url_for(admin_url: str, name: str, password: str | None = None) -> str:
    """The admin URL pointed at database ``name``, optionally carrying ``password``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(admin_url)
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0] or "postgres"
        netloc = f"{user}:{password}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{name}"))


@pytest.fixture
def database_url(postgres_admin_url: str, pytestconfig: pytest.Config) -> Iterator[str]:
    """A fresh database for this test; its URL carries the canary password (trust auth ignores it)."""
    name = _fresh.take(postgres_admin_url, pytestconfig.getini(DATABASE_PREFIX_OPTION))
    try:
        yield database_url_for(postgres_admin_url, name, password=CANARY_PASSWORD)
    finally:
        discard_database(postgres_admin_url, name)


MYSQL_LOCAL_SERVER_URL = "mysql://root@127.0.0.1:3306/mysql"


def mysql_connect(url: str, **kwargs: Any) -> Any:
    """A faber MySQL connection (PyMySQL, with ``execute``) on ``url``, autocommit."""
    from faber_core.context import Database
    from faber_core.secrets import Secret

    database = Database(Secret(url), source="the test's MySQL URL", connect_timeout=3)
    return database.engine.connect(
        database, autocommit=True, application_name="faber tests", migration_session=True, **kwargs
    )


@pytest.fixture(scope="session")
def mysql_admin_url() -> str:
    """A URL of a MySQL/MariaDB user that may create databases and users; skips without a server."""
    import pymysql

    url = os.environ.get("FABER_TEST_MYSQL_ADMIN_URL") or MYSQL_LOCAL_SERVER_URL
    try:
        mysql_connect(url).close()
    except pymysql.Error as exc:
        pytest.skip(
            f"no MySQL/MariaDB server answers at {url.rpartition('@')[2]} ({exc.args[0]}): start one "
            "(.ci/run starts an installed MariaDB) or set FABER_TEST_MYSQL_ADMIN_URL"
        )
    return url


@pytest.fixture
def mysql_database_url(mysql_admin_url: str, pytestconfig: pytest.Config) -> Iterator[str]:
    """A fresh MySQL database for this test, reached as a user of its own whose password is the canary."""
    from urllib.parse import urlsplit, urlunsplit

    name = f"{pytestconfig.getini(DATABASE_PREFIX_OPTION)}_{uuid.uuid4().hex[:12]}"
    user = f"faber_{uuid.uuid4().hex[:12]}"
    with mysql_connect(mysql_admin_url) as conn:
        conn.execute(f"CREATE DATABASE `{name}`")
        conn.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{CANARY_PASSWORD}'")
        conn.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'%'")
        # A mysqldump restore loads into a scratch database beside the target (docs/mysql.md).
        conn.execute(f"GRANT ALL PRIVILEGES ON `faber\\_restore\\_%`.* TO '{user}'@'%'")
        # A preview rehearses code migrations in a throwaway database beside the target (docs/mysql.md).
        conn.execute(f"GRANT ALL PRIVILEGES ON `faber\\_rehearsal\\_%`.* TO '{user}'@'%'")
        # faber's lock messages name the holder from the process list, which shows others with PROCESS.
        conn.execute(f"GRANT PROCESS ON *.* TO '{user}'@'%'")
    parts = urlsplit(mysql_admin_url)
    netloc = f"{user}:{CANARY_PASSWORD}@{parts.netloc.rpartition('@')[2]}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc, path=f"/{name}"))
    finally:
        scratch = mysql_scratch_databases(mysql_admin_url, name)  # a killed restore's, left for the next one
        with mysql_connect(mysql_admin_url) as conn:
            for database in [name, *scratch]:
                conn.execute(f"DROP DATABASE IF EXISTS `{database}`")
            conn.execute(f"DROP USER IF EXISTS '{user}'@'%'")


def mysql_scratch_databases(admin_url: str, database: str) -> list[str]:
    """The scratch databases that restores of ``database`` by the mysqldump provider left on the server."""
    from faber_core.backup.mysql_dumps import scratch_prefix

    with mysql_connect(admin_url) as conn:
        rows = conn.execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'faber\\_restore\\_%'"
        ).fetchall()
    return [name for (name,) in rows if name.startswith(scratch_prefix(database))]


def mysql_rehearsal_databases(admin_url: str) -> list[str]:
    """The rehearsal databases (``faber_rehearsal_*``) on the MySQL/MariaDB server."""
    with mysql_connect(admin_url) as conn:
        rows = conn.execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'faber\\_rehearsal\\_%'"
        ).fetchall()
    return [name for (name,) in rows]


@pytest.fixture
def mysql_query(mysql_database_url):
    """``mysql_query(sql, params=None) -> list[tuple]`` on the test's MySQL database."""

    def run(sql: str, params: list | None = None) -> list[tuple]:
        with mysql_connect(mysql_database_url) as conn:
            cursor = conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    return run


@pytest.fixture
def faber_project(tmp_path: Path):
    """Return ``make(config: dict, **files) -> Path``: a project dir with the config and files written."""

    def make(config: dict[str, Any], files: dict[str, str] | None = None, root: Path | None = None) -> Path:
        project = root or tmp_path / "project"
        config_path = project / ".fractary/plugins/faber-db/config.json"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(config, indent=2))
        for relative, content in (files or {}).items():
            target = project / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        return project

    return make


@dataclass
class FaberRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def faber_command(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
    timeout: float = 300,
) -> FaberRun:
    """Run ``python -m faber_core ARGS`` to its end in a process of its own, ``env`` added to this
    process's environment, ``input`` (or nothing) on its stdin and no terminal, so approval
    prompts behave as in CI; raises :class:`subprocess.TimeoutExpired` after ``timeout`` seconds.

    The process is a fork of an interpreter that has imported faber already
    (:mod:`faber_core.testing.forked`: a test spends no CPU on faber's start-up), or a new
    interpreter where ``env`` changes how one starts.
    """
    full_env = {**os.environ, **(env or {})}
    stdin = input if input is not None else ""
    if can_fork_with(full_env):
        proc = run_faber_forked(list(args), cwd=cwd, environ=full_env, input=stdin, timeout=timeout)
    else:
        proc = subprocess.run(
            [sys.executable, "-m", "faber_core", *args],
            cwd=cwd,
            env=full_env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    return FaberRun(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def run_faber():
    """Return :func:`faber_command`: ``run(*args, env={...}, cwd=None, input=None, timeout=300) -> FaberRun``."""
    return faber_command


def start_faber(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m faber_core ARGS`` in the background, no terminal, output captured: a run to signal."""
    return subprocess.Popen(
        [sys.executable, "-m", "faber_core", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def faber_at_once(count: int, *args: str, cwd: Path, timeout: float = 300) -> list[FaberRun]:
    """``count`` runs of ``python -m faber_core ARGS`` started together, each one's output once
    all have finished: concurrent deploys of one project."""
    runs = [start_faber(*args, cwd=cwd) for _ in range(count)]
    finished = [run.communicate(timeout=timeout) for run in runs]
    return [
        FaberRun(run.returncode, out.decode(), err.decode()) for run, (out, err) in zip(runs, finished, strict=True)
    ]


def without_root_file_access() -> list[str]:
    """The prefix that runs a program as this user without the power to read any file: root's
    is taken from it (``setpriv``), as a deploy user's never had it."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run faber as root without the power to read any file")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on now, for a server a test starts (one that cannot
    be told to pick its own)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Any, what: str, timeout: float = 60) -> Any:
    """Poll ``condition()`` every 0.1 s until it is truthy (returned) or ``timeout`` runs out (AssertionError)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (Linux ``/proc``); a zombie nobody reaped counts as dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def pytest_terminal_summary(terminalreporter, config) -> None:
    """How many fault-injection points the run covered (``faber_core.testing.faults``)."""
    from faber_core.testing.faults import injection_summary

    line = injection_summary(config)
    if line:
        terminalreporter.write_line(line)


@pytest.fixture
def plugin_manager():
    """A PluginManager with the built-in plugins only; tests register their own plugins on it."""
    from faber_core.plugins import build_plugin_manager

    return build_plugin_manager(load_entrypoints=False)


def install_node_project(directory: Path, installed_marker: str) -> Path:
    """``npm ci`` in a fixture Node project unless ``installed_marker`` (a path inside it) exists.

    Skips the calling test where npm is not installed; returns ``directory / "node_modules"``.
    Parallel test workers (pytest-xdist) install one at a time: two ``npm ci`` in one folder
    remove each other's files.
    """
    import fcntl
    import hashlib
    import shutil
    import tempfile

    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"faber-npm-install-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / installed_marker).exists():
            npm = shutil.which("npm")
            if npm is None:
                pytest.skip(f"npm is not installed: {directory.name} needs Node and npm")
            installed = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=directory, capture_output=True, text=True, timeout=600
            )
            assert installed.returncode == 0, f"npm ci failed:\n{installed.stdout}\n{installed.stderr}"
    return directory / "node_modules"


@pytest.fixture
def query(database_url):
    """``query(sql, params=None) -> list[tuple]`` on the test's database."""
    import psycopg

    def run(sql: str, params: list | None = None) -> list[tuple]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    return run


@pytest.fixture
def run_context():
    """``make(project_dir, events=None, environment="production", operation="deploy-migrations")``.

    A :class:`~faber_core.context.RunContext` on a project, appending every event to ``events``;
    closed when the test ends, as faber closes a run's context (its Node runners end then).
    """
    from faber_core.context import open_context

    made = []

    def make(
        project_dir: Path,
        events: list | None = None,
        environment: str = "production",
        operation: str = "deploy-migrations",
    ):
        listeners = [events.append] if events is not None else []
        made.append(open_context(project_dir, environment, operation, listeners=listeners))
        return made[-1]

    yield make
    for context in made:
        context.close()


def database_state(url: str) -> dict[str, list]:
    """What a restore must reproduce: tables with their rows, constraints, indexes, every
    database-level object pg_dump dumps, and the database's own properties."""
    # faber's own schema is not restored (it records the runs, the interrupted one included).
    user = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'faber') AND n.nspname NOT LIKE 'pg\\_%'"
    import psycopg

    with psycopg.connect(url) as conn:

        def rows(query: str) -> list:
            return conn.execute(query).fetchall()

        tables = [
            t
            for (t,) in rows(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c"
                f" JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND {user} ORDER BY 1"
            )
        ]
        return {
            "tables": [
                (
                    t,
                    *conn.execute(
                        f"SELECT count(*), md5(string_agg(x::text, ',' ORDER BY x::text)) FROM {t} x"
                    ).fetchone(),
                )
                for t in tables
            ],  # noqa: E501
            "constraints": rows(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
                f" JOIN pg_namespace n ON n.oid = c.connamespace WHERE {user} ORDER BY 1, 2"
            ),
            "indexes": rows(
                "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                f" JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {user} ORDER BY 1"
            ),
            "large_objects": rows("SELECT oid::bigint, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1"),
            "publications": rows(
                "SELECT p.pubname, (SELECT string_agg(t.schemaname || '.' || t.tablename, ',' ORDER BY 1)"
                " FROM pg_publication_tables t WHERE t.pubname = p.pubname) FROM pg_publication p ORDER BY 1"
            ),
            "subscriptions": rows(
                "SELECT subname, subenabled, subslotname, subpublications::text FROM pg_subscription"
                " WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY 1"
            ),
            "event_triggers": rows("SELECT evtname, evtevent, evtenabled FROM pg_event_trigger ORDER BY 1"),
            "extensions": rows("SELECT extname, extnamespace::regnamespace::text FROM pg_extension ORDER BY 1"),
            "schemas": rows(f"SELECT nspname FROM pg_namespace n WHERE {user} ORDER BY 1"),
            # What lives on the database rather than in it: its settings (for every role, '', and
            # per role), comment, connection limit and privileges (the defaults when none are set).
            "database_settings": rows(
                "SELECT CASE setrole WHEN 0 THEN '' ELSE pg_get_userbyid(setrole) END, c FROM pg_db_role_setting,"
                " unnest(setconfig) c WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname ="
                " current_database()) ORDER BY 1, 2"
            ),
            "database": rows(
                "SELECT shobj_description(oid, 'pg_database'), datconnlimit FROM pg_database"
                " WHERE datname = current_database()"
            ),
            "database_privileges": rows(
                "SELECT CASE grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(grantee) END, privilege_type,"
                " is_grantable FROM pg_database, aclexplode(COALESCE(datacl, acldefault('d', datdba)))"
                " WHERE datname = current_database() ORDER BY 1, 2"
            ),
        }
