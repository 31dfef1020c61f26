"""A fleet environment's targets: where their URLs come from, and which share of them a shard takes.

An environment with ``targets`` instead of ``database_url_env`` is a fleet (docs/fleet.md). Its
targets come from exactly one source:

- ``urls_env``: a variable holding one URL per line, each optionally preceded by a name;
- ``file``: a file in the project, one ``NAME VARIABLE`` per line;
- ``catalog``: a read-only query against a catalog database returning ``name, variable`` rows.

Every URL is registered with the run's redactor before anything parses it, and no error quotes
a URL or a line that holds one: errors name the variable and the line number.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from faber_core.config import TARGET_NAME, VARIABLE_NAME, EnvironmentSettings
from faber_core.errors import ConfigError, HealthCheckFailed
from faber_core.secrets import Redactor, Secret

JOB_INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
JOB_COUNT_VARIABLE = "JOB_COMPLETIONS"
MAX_SHARDS = 10_000


@dataclass(frozen=True)
class Target:
    """One database of a fleet."""

    name: str
    url: Secret
    source: str
    """Where the URL came from, for messages: ``$TENANT_DATABASE_URLS line 3`` or ``$ACME_DATABASE_URL``."""
    url_env: str | None = None
    """The variable that holds this URL alone (``file`` and ``catalog`` sources), for recovery hints."""


def discover_targets(
    project_dir: Path, environment: str, settings: EnvironmentSettings, redactor: Redactor
) -> list[Target]:
    """The fleet's targets in their configured order; a :class:`ConfigError` for an empty or broken list."""
    targets = settings.targets
    assert targets is not None, "only a fleet environment has targets"
    if targets.urls_env is not None:
        found = _from_urls_variable(targets.urls_env, redactor)
        where = f"${targets.urls_env}"
    elif targets.file is not None:
        found = _from_variables(_file_entries(project_dir, targets.file), redactor)
        where = targets.file
    else:
        assert targets.catalog is not None
        found = _from_variables(_catalog_entries(settings, redactor), redactor)
        where = "the catalog query"
    if not found:
        raise ConfigError(
            f"The fleet {environment} has no targets: {where} lists none",
            suggestions=[f"List the databases of {environment} in {where} (docs/fleet.md)"],
        )
    _refuse_duplicates(found, where)
    _refuse_one_database_twice(found, where)
    return found


def find_target(targets: list[Target], environment: str, name: str) -> Target:
    """The target ``name`` among the fleet ``environment``'s ``targets`` (``faber rollback tenants/acme``)."""
    chosen = next((t for t in targets if t.name == name), None)
    if chosen is None:
        from faber_core.suggest import did_you_mean

        raise ConfigError(
            f"The fleet {environment} has no target {name!r}{did_you_mean(name, [t.name for t in targets])}",
            suggestions=[f"List its targets with: faber status {environment}"],
        )
    return chosen


def url_variables(targets: Iterable[Target]) -> frozenset[str]:
    """The variables that hold the targets' URLs one each (``file`` and ``catalog`` sources)."""
    return frozenset(target.url_env for target in targets if target.url_env)


# urls_env: one URL per line ------------------------------------------------------------


def _from_urls_variable(variable: str, redactor: Redactor) -> list[Target]:
    from faber_core.context import read_url_variable
    from faber_core.engines import engine_for_url

    text = read_url_variable(variable)
    entries = []
    # Lines end at "\n" only (a "\r" before it is stripped): splitlines() also splits at "\r", "\f",
    # "\x1c", ..., which a password may hold, and would quote its second half as a target's name.
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # "URL" or "NAME URL": a URL is never split, so a space inside one cannot make a name of it.
        # A name holds no ':', so a first word with one begins a URL, even one with a mistyped or
        # capitalised scheme, whose error must not quote a piece of its password as a name.
        name, _, url = ("", "", line) if ":" in line.split(None, 1)[0] else _split_name(line)
        url = url.strip()
        redactor.add(url)
        entries.append((number, name, url))
    if not entries:
        raise ConfigError(
            f"Environment variable {variable} is not set or holds no URL",
            suggestions=[f"Export {variable} with one database URL per line, each optionally preceded by a name"],
        )
    found = []
    for number, name, url in entries:
        source = f"${variable} line {number}"
        if not name:
            name = engine_for_url(url, source).parse_url(url, source).name or ""
            if not name:
                raise ConfigError(
                    f"The URL in {source} names no database, so the target needs a name",
                    suggestions=[f"Write the line as: NAME URL (in {variable})"],
                )
        _check_name(name, source)
        found.append(Target(name=name, url=Secret(url), source=source))
    return found


def _split_name(line: str) -> tuple[str, str, str]:
    parts = line.split(None, 1)
    return (parts[0], " ", parts[1]) if len(parts) == 2 else ("", "", line)


# file and catalog: names and the variables holding their URLs ------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str
    variable: str
    where: str


MAX_TARGETS_FILE_BYTES = 64 * 1024**2


def _file_entries(project_dir: Path, relative: str) -> list[_Entry]:
    from faber_core.migration_files import read_regular_file

    suggestion = "Set targets.file to a file in the project: one 'NAME VARIABLE' per line (docs/fleet.md)"
    try:
        data = read_regular_file(project_dir / relative, f"The targets file {relative}", MAX_TARGETS_FILE_BYTES)
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(
            f"Cannot read the targets file {relative}: not UTF-8 text", suggestions=[suggestion]
        ) from None
    except ConfigError as error:
        raise ConfigError(error.message, suggestions=[suggestion]) from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(
                f"{relative} line {number}: expected a target name and a variable name, separated by a space",
                suggestions=["Write each target as: NAME VARIABLE, e.g. acme ACME_DATABASE_URL"],
            )
        entries.append(_Entry(parts[0], parts[1], f"{relative} line {number}"))
    return entries


def _catalog_entries(settings: EnvironmentSettings, redactor: Redactor) -> list[_Entry]:
    import psycopg

    from faber_core.context import Database, read_url_variable
    from faber_core.postgres.health import describe_connection_error

    assert settings.targets is not None and settings.targets.catalog is not None
    catalog = settings.targets.catalog
    value = read_url_variable(catalog.url_env).strip()
    if not value:
        raise ConfigError(
            f"Environment variable {catalog.url_env} is not set",
            suggestions=[f"Export {catalog.url_env} with the catalog database's URL"],
        )
    redactor.add(value)
    database = Database(
        Secret(value),
        source=f"${catalog.url_env}",
        connect_timeout=settings.connect_timeout_seconds,
        lock_timeout=settings.query_lock_timeout_seconds,
        statement_timeout=settings.query_statement_timeout_seconds,
    )
    for secret in database.secrets():
        redactor.add(secret)
    try:
        with database.connect(application_name="faber catalog") as conn, conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            # A prepared statement holds one statement: "COMMIT; DELETE ..." cannot end the read-only
            # transaction and write after it, as the simple query protocol would let it.
            rows = conn.execute(catalog.query, prepare=True).fetchall()
    except psycopg.OperationalError as exc:
        reason = redactor.redact(describe_connection_error(exc, database))
        raise HealthCheckFailed(
            f"Cannot read the fleet's targets from the catalog: {reason}",
            suggestions=[f"Check the catalog database: psql ${catalog.url_env}"],
        ) from None
    except psycopg.Error as exc:
        reason = redactor.redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise ConfigError(
            f"The catalog query failed: {reason}",
            suggestions=["targets.catalog.query must return two text columns: the target's name and its URL variable"],
        ) from None
    entries = []
    for number, row in enumerate(rows, 1):
        if len(row) != 2 or not all(isinstance(value, str) for value in row):
            raise ConfigError(
                f"The catalog query's row {number} is not two text columns (name, URL variable)",
                suggestions=["SELECT name, url_variable FROM ... : both text"],
            )
        entries.append(_Entry(row[0], row[1], f"the catalog query's row {number}"))
    return entries


def _from_variables(entries: Iterable[_Entry], redactor: Redactor) -> list[Target]:
    from faber_core.context import read_url_variable

    found, missing = [], []
    for entry in entries:
        _check_name(entry.name, entry.where)
        if not VARIABLE_NAME.match(entry.variable):
            # Not quoted: what stands there is often the URL itself, password and all.
            raise ConfigError(
                f"{entry.where}: the second column is not the name of an environment variable "
                "(letters, digits and '_')",
                suggestions=["Put each target's URL in a variable of its own and name it: acme ACME_DATABASE_URL"],
            )
        value = read_url_variable(entry.variable).strip()
        if not value:
            missing.append(entry.variable)
            continue
        redactor.add(value)
        found.append(Target(name=entry.name, url=Secret(value), source=f"${entry.variable}", url_env=entry.variable))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ConfigError(
            f"{len(missing)} target URL variable(s) not set: {shown}",
            suggestions=["Export each target's URL variable in the deploy job"],
        )
    return found


def _check_name(name: str, where: str) -> None:
    if not TARGET_NAME.match(name):
        raise ConfigError(
            f"{where}: {name!r} is not a valid target name",
            suggestions=[
                "Target names use letters, digits, '.', '_' and '-' (at most 63), starting with a letter or digit"
            ],
        )


def _refuse_duplicates(targets: list[Target], where: str) -> None:
    seen: dict[str, Target] = {}
    for target in targets:
        if target.name in seen:
            raise ConfigError(
                f"Two targets in {where} are named {target.name!r} ({seen[target.name].source} and {target.source})",
                suggestions=["Give every target its own name"],
            )
        seen[target.name] = target


_THIS_MACHINE = frozenset({"localhost", "127.0.0.1", "::1"})
"""Host names of the machine faber runs on: one server, however a URL names it."""


def _refuse_one_database_twice(targets: list[Target], where: str) -> None:
    """Two targets on one database would deploy it from two threads at once: one waits for the
    other's lock and fails. Refused before any target is touched, naming both (never their URLs:
    the message shows the server and database only)."""
    from faber_core.engines import engine_for_url

    seen: dict[tuple[str, str, str, str | None], Target] = {}
    for target in targets:
        engine = engine_for_url(target.url.reveal(), target.source)
        parsed = engine.parse_url(target.url.reveal(), target.source)
        host = (parsed.host or "localhost").lower()
        key = (
            engine.name,
            "localhost" if host in _THIS_MACHINE else host,
            parsed.port or str(engine.default_port),
            parsed.name,
        )
        first = seen.setdefault(key, target)
        if first is not target:
            database = f"{key[1]}:{key[2]}/{parsed.name or '(the default database)'}"
            raise ConfigError(
                f"Targets {first.name!r} ({first.source}) and {target.name!r} ({target.source}) in {where} are "
                f"the same database, {database}: the fleet would deploy it twice at once",
                suggestions=[f"List each database once in {where}"],
            )


# Shards --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based, as ``--shard 2/4``): the targets whose name hashes to it."""

    index: int
    count: int

    def takes(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(name: str, count: int) -> int:
    """The shard (1..count) of a target: a stable hash of its name, the same on every machine and
    Python version (``hash()`` is salted per process), so shards are disjoint and their union is the fleet."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return 1 + int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str) -> Shard:
    """``I/N`` with 1 <= I <= N; a :class:`ConfigError` otherwise."""
    index, slash, count = text.strip().partition("/")
    if not (slash and _plain_number(index) and _plain_number(count)) or not 1 <= int(index) <= int(count) <= MAX_SHARDS:
        raise ConfigError(
            f"--shard {text!r} is not I/N with 1 <= I <= N",
            suggestions=["e.g. --shard 2/4: the second of four shards"],
        )
    return Shard(int(index), int(count))


def _plain_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', which int() refuses."""
    return text.isascii() and text.isdigit()


def shard_from_job() -> Shard | None:
    """The shard of a Kubernetes Indexed Job's pod: ``JOB_COMPLETION_INDEX`` (0-based, set by
    Kubernetes) of ``JOB_COMPLETIONS`` (set it from the job's ``completions``); None outside one."""
    index = os.environ.get(JOB_INDEX_VARIABLE, "").strip()
    count = os.environ.get(JOB_COUNT_VARIABLE, "").strip()
    if not index:
        return None
    if not (_plain_number(index) and _plain_number(count) and int(index) < int(count) <= MAX_SHARDS):
        raise ConfigError(
            f"{JOB_INDEX_VARIABLE}={index!r} and {JOB_COUNT_VARIABLE}={count!r} are not a 0-based index "
            f"below a number of completions (at most {MAX_SHARDS})",
            suggestions=[f"Set {JOB_COUNT_VARIABLE} to the job's completions (docs/fleet.md has the manifest)"],
        )
    return Shard(int(index) + 1, int(count))
