"""No channel carries a credential: every command, on success and on each failure path, runs with
a canary password in its database URL, and the canary appears nowhere.

Searched: stdout and stderr (human and ``--json``), every file under ``.faber/`` (audit log,
backup archives and manifests), the deployment history table, the spans exported over OTLP, and
the command lines of every child process, both as the children record them (wrappers around
pg_dump, pg_restore, psql and git) and as the process list shows them while the commands run.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import psycopg

from faber_core.testing.fixtures import CANARY_PASSWORD
from faber_core.testing.otlp import OtlpReceiver

USERS = "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);"
POSTS = "CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users(id));"
# Fails with a database error that quotes the canary, as errors quoting a statement's values do.
LEAKY = f"ALTER TABLE users ADD COLUMN note text; SELECT '{CANARY_PASSWORD}'::int;"
WRAPPED_PROGRAMS = ("pg_dump", "pg_restore", "psql", "git")


@dataclass
class Case:
    name: str
    args: tuple[str, ...]
    exit_code: int
    env: dict[str, str] | None = None
    add_migrations: dict[str, str] | None = None


def cases(database_url: str) -> list[Case]:
    unreachable = database_url.replace("127.0.0.1:5432", "127.0.0.1:1")
    missing_database = database_url.rsplit("/", 1)[0] + "/faber_no_such_database"
    return [
        Case("dry run", ("migrate", "production", "--dry-run", "--json"), 0),
        Case("migrate", ("migrate", "production", "--yes", "--json"), 0),
        Case("no pending", ("migrate", "production", "--yes"), 0),
        Case(
            "dry run showing the SQL",
            ("migrate", "production", "--dry-run"),
            0,
            add_migrations={"002_posts": POSTS, "003_leaky": LEAKY},
        ),
        Case("failed migration, rolled back", ("migrate", "production", "--yes", "--json"), 6),
        Case("failed migration, human output", ("migrate", "production", "--yes"), 6),
        Case("approval refused", ("migrate", "production", "--json"), 5),
        Case("status", ("status", "production", "--json"), 0),
        Case("health", ("health", "production", "--json"), 0),
        Case("backup", ("backup", "production", "--json"), 0),
        Case("backups", ("backups", "production", "--json"), 0),
        Case("rollback", ("rollback", "production", "--yes", "--json"), 0),
        Case("history", ("history", "production", "--json"), 0),
        Case("history, human output", ("history", "production"), 0),
        Case(
            "unreachable database",
            ("migrate", "production", "--yes", "--json"),
            3,
            env={"APP_DATABASE_URL": unreachable},
        ),
        Case(
            "unreachable database, human output",
            ("rollback", "production", "--yes"),
            3,
            env={"APP_DATABASE_URL": unreachable},
        ),
        Case(
            "missing database",
            ("migrate", "production", "--dry-run", "--json"),
            3,
            env={"APP_DATABASE_URL": missing_database},
        ),
        Case(
            "missing env var",
            ("migrate", "production", "--yes", "--json"),
            2,
            env={"APP_DATABASE_URL": "", "DATABASE_URL": database_url},
        ),
        Case("status, missing env var", ("status", "production"), 2, env={"APP_DATABASE_URL": ""}),
    ]


def wrap_programs(
    directory: Path, log: Path, programs: tuple[str, ...] = WRAPPED_PROGRAMS, password_variable: str = "PGPASSWORD"
) -> str:
    """Put recording wrappers first on PATH: each logs its argv (and whether a password came by env)."""
    directory.mkdir()
    for program in programs:
        real = shutil.which(program)
        assert real, f"{program} is needed for this test"
        script = directory / program
        script.write_text(
            "#!/bin/sh\n"
            f"printf '%s %s\\n' \"${{{password_variable}:+[{password_variable} in env]}}\" \"$0 $*\" >> '{log}'\n"
            f"exec '{real}' \"$@\"\n"
        )
        script.chmod(0o755)
    return f"{directory}{os.pathsep}{os.environ['PATH']}"


class ProcessListSampler:
    """Reads the command line of every descendant of this test process, over and over, in a thread."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessListSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.seen.update(self._descendant_command_lines())

    @staticmethod
    def _descendant_command_lines() -> list[str]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    # The parent pid is the second field after the parenthesised program name.
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        ours = {os.getpid()}
        changed = True
        while changed:
            new = {pid for pid, parent in parents.items() if parent in ours and pid not in ours}
            ours |= new
            changed = bool(new)
        lines = []
        for pid in ours - {os.getpid()}:
            try:
                lines.append((Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
        return lines


def test_no_command_leaks_the_canary_password_anywhere(faber_project, database_url, run_faber, tmp_path):
    assert CANARY_PASSWORD in database_url
    argv_log = tmp_path / "argv.log"
    environment = {"database_url_env": "APP_DATABASE_URL", "lock_wait_seconds": 1}
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}},
        {"migrations/001_users.sql": USERS},
    )

    outputs: list[str] = []
    with OtlpReceiver() as receiver, ProcessListSampler() as sampler:
        base_env = {
            "FABER_PLUGINS": "faber_core.testing.sqlfiles",
            "APP_DATABASE_URL": database_url,
            "PATH": wrap_programs(tmp_path / "bin", argv_log),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        }
        for case in cases(database_url):
            for name, sql in (case.add_migrations or {}).items():
                (project / "migrations" / f"{name}.sql").write_text(sql)
            run = run_faber(*case.args, "--cwd", str(project), env={**base_env, **(case.env or {})})
            assert run.returncode == case.exit_code, (case.name, run.output)
            outputs.append(f"--- {case.name}\n{run.stdout}\n{run.stderr}")

    channels = {"stdout and stderr": "\n".join(outputs)}
    state_files = [path for path in (project / ".faber").rglob("*") if path.is_file()]
    channels |= {str(path.relative_to(project)): path.read_bytes().decode(errors="replace") for path in state_files}
    with psycopg.connect(database_url) as conn:
        history = [row[0] for row in conn.execute("SELECT row_to_json(d)::text FROM faber.faber_deployments d")]
    channels["history table"] = "\n".join(history)
    channels["exported spans"] = "\n".join(
        [body.decode(errors="replace") for body in receiver.bodies] + [repr(span) for span in receiver.spans()]
    )
    channels["child process argv (wrappers)"] = argv_log.read_text()
    channels["process list"] = "\n".join(sorted(sampler.seen))

    leaks = [channel for channel, text in channels.items() if CANARY_PASSWORD in text]
    assert leaks == [], leaks

    # The channels searched are real and full: every kind of output was produced.
    assert any(path.name == "audit.log" for path in state_files)
    assert any(path.suffix == ".json" for path in state_files) and any(path.suffix == ".dump" for path in state_files)
    assert len(history) >= 6
    roots = {span.name for span in receiver.spans() if not span.parent_span_id}
    assert {
        "faber.migrate",
        "faber.status",
        "faber.health",
        "faber.backup",
        "faber.backups",
        "faber.rollback",
        "faber.history",
    } <= roots
    wrapped = channels["child process argv (wrappers)"]
    assert "[PGPASSWORD in env]" in wrapped and "/pg_dump " in wrapped and "/psql " in wrapped
    assert any("faber_core" in line for line in sampler.seen)
    assert "invalid input syntax for type integer" in channels["history table"]


def test_libpq_programs_get_the_password_through_their_environment(database_url):
    """What faber hands pg_dump, pg_restore and psql: the credentials as PG* variables."""
    from faber_core.context import Database
    from faber_core.secrets import Secret

    database = Database(Secret(database_url), source="$APP_DATABASE_URL")
    env = database.client_env()

    assert env["PGPASSWORD"] == CANARY_PASSWORD
    assert CANARY_PASSWORD not in str(database.url) and CANARY_PASSWORD not in repr(database.url)


MYSQL_USERS = "CREATE TABLE users (id int AUTO_INCREMENT PRIMARY KEY, email varchar(200) NOT NULL);"
# Fails with a server error that quotes the canary (as a table name).
MYSQL_LEAKY = f"ALTER TABLE users ADD COLUMN note text; SELECT * FROM `{CANARY_PASSWORD}`;"
MYSQL_PROGRAMS = ("mariadb-dump", "mariadb", "git")


def mysql_cases(url: str) -> list[Case]:
    unreachable = url.replace("127.0.0.1:3306", "127.0.0.1:1")
    return [
        Case("dry run", ("migrate", "production", "--dry-run", "--json"), 0),
        Case("migrate", ("migrate", "production", "--yes", "--json"), 0),
        Case("dry run showing the SQL", ("migrate", "production", "--dry-run"), 0, add_migrations={"002": MYSQL_LEAKY}),
        Case("failed migration, rolled back", ("migrate", "production", "--yes", "--json"), 6),
        Case("failed migration, human output", ("migrate", "production", "--yes"), 6),
        Case("status", ("status", "production", "--json"), 0),
        Case("health", ("health", "production", "--json"), 0),
        Case("backup", ("backup", "production", "--json"), 0),
        Case("backups", ("backups", "production", "--json"), 0),
        Case("rollback", ("rollback", "production", "--yes", "--json"), 0),
        Case("history", ("history", "production", "--json"), 0),
        Case(
            "unreachable database",
            ("migrate", "production", "--yes", "--json"),
            3,
            env={"APP_DATABASE_URL": unreachable},
        ),
        Case(
            "wrong password",
            ("status", "production"),
            3,
            env={"APP_DATABASE_URL": url.replace(CANARY_PASSWORD, "x" + CANARY_PASSWORD)},
        ),
    ]


def test_no_command_leaks_the_canary_password_anywhere_on_mysql(
    faber_project, mysql_database_url, mysql_query, run_faber, tmp_path
):
    assert CANARY_PASSWORD in mysql_database_url
    argv_log = tmp_path / "argv.log"
    environment = {"database_url_env": "APP_DATABASE_URL", "lock_wait_seconds": 1}
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}},
        {"migrations/001_users.sql": MYSQL_USERS},
    )

    outputs: list[str] = []
    with OtlpReceiver() as receiver, ProcessListSampler() as sampler:
        base_env = {
            "FABER_PLUGINS": "faber_core.testing.sqlfiles",
            "APP_DATABASE_URL": mysql_database_url,
            "PATH": wrap_programs(tmp_path / "bin", argv_log, MYSQL_PROGRAMS, "MYSQL_PWD"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        }
        for case in mysql_cases(mysql_database_url):
            for name, sql in (case.add_migrations or {}).items():
                (project / "migrations" / f"{name}.sql").write_text(sql)
            run = run_faber(*case.args, "--cwd", str(project), env={**base_env, **(case.env or {})})
            assert run.returncode == case.exit_code, (case.name, run.output)
            outputs.append(f"--- {case.name}\n{run.stdout}\n{run.stderr}")

    channels = {"stdout and stderr": "\n".join(outputs)}
    state_files = [path for path in (project / ".faber").rglob("*") if path.is_file()]
    channels |= {str(path.relative_to(project)): path.read_bytes().decode(errors="replace") for path in state_files}
    history = [" ".join(map(str, row)) for row in mysql_query("SELECT * FROM faber_deployments")]
    channels["history table"] = "\n".join(history)
    channels["exported spans"] = "\n".join(
        [body.decode(errors="replace") for body in receiver.bodies] + [repr(span) for span in receiver.spans()]
    )
    channels["child process argv (wrappers)"] = argv_log.read_text()
    channels["process list"] = "\n".join(sorted(sampler.seen))

    leaks = [channel for channel, text in channels.items() if CANARY_PASSWORD in text]
    assert leaks == [], leaks

    # The channels searched are real and full: every kind of output was produced.
    assert any(path.suffix == ".json" for path in state_files) and any(path.suffix == ".dump" for path in state_files)
    assert len(history) >= 5
    wrapped = channels["child process argv (wrappers)"]
    assert "[MYSQL_PWD in env]" in wrapped and "/mariadb-dump " in wrapped and "/mariadb " in wrapped
    assert "doesn't exist" in channels["stdout and stderr"]  # the leaky migration's error was shown, masked


def test_a_password_from_pgpassword_is_masked_as_the_urls_is(faber_project, database_url, run_faber, query):
    """libpq takes the password from PGPASSWORD when the URL has none: a database error quoting it
    is masked in every channel, as one quoting the URL's password is."""
    environment = {"database_url_env": "APP_DATABASE_URL", "lock_wait_seconds": 1}
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}},
        {"migrations/001_users.sql": USERS, "migrations/002_leaky.sql": LEAKY},
    )
    env = {
        "FABER_PLUGINS": "faber_core.testing.sqlfiles",
        "APP_DATABASE_URL": database_url.replace(f":{CANARY_PASSWORD}@", "@"),
        "PGPASSWORD": CANARY_PASSWORD,
    }

    deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    history = run_faber("history", "production", "--cwd", str(project), env=env)

    assert deploy.returncode == 6 and history.returncode == 0, deploy.output + history.output
    assert "invalid input syntax for type integer" in deploy.json["error"]
    rows = query("SELECT row_to_json(d)::text FROM faber.faber_deployments d")
    channels = [deploy.output, history.output, (project / ".faber" / "audit.log").read_text(), *(r[0] for r in rows)]
    assert [channel for channel in channels if CANARY_PASSWORD in channel] == []
