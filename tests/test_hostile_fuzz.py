"""Property-based fuzzing of what an attacker or a hurried operator controls: database URLs
(passwords built from every special character, raw and percent-encoded), config files, migration
folder layouts and names, and migration SQL.

Invariants: no traceback, only documented exit codes, no piece of the canary password in any
channel, control characters never printed raw. Most examples run in-process (a subprocess each
would be too slow); a smaller number are full CLI runs against a real database. Each test prints
how many cases it ran.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import string
import tempfile
from pathlib import Path
from urllib.parse import quote

import pglast
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from pglast.parser import ParseError

from faber_core.config import CONFIG_PATH, FaberConfig, load_config
from faber_core.context import Database
from faber_core.errors import EXIT_CODES, ConfigError
from faber_core.postgres.sql import parse_script
from faber_core.render import escape_controls
from faber_core.secrets import Redactor, Secret

CANARY_PIECES = ("CanaryOne7q", "CanaryTwo4w", "CanaryTri2z")
SPECIALS = string.punctuation + " \t\n\x00\x1b\x7féü€😀"
DOCUMENTED_EXIT_CODES = set(EXIT_CODES.values()) | {0, 130}
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def report(capsys, name: str, count: int) -> None:
    with capsys.disabled():
        print(f"\n[hostile fuzz] {name}: {count} cases")


def leaked(text: str) -> list[str]:
    return [piece for piece in CANARY_PIECES if piece in text]


passwords = st.builds(
    lambda gaps: gaps[0] + CANARY_PIECES[0] + gaps[1] + CANARY_PIECES[1] + gaps[2] + CANARY_PIECES[2] + gaps[3],
    st.lists(st.text(alphabet=SPECIALS, max_size=4), min_size=4, max_size=4),
)


def url_with(password: str, encoded: bool, tail: str = "127.0.0.1:5432/app", user: str = "app") -> str:
    return f"postgresql://{user}:{quote(password, safe='') if encoded else password}@{tail}"


@pytest.mark.parametrize("encoded", [True, False], ids=["encoded", "raw"])
def test_urls_parse_or_are_refused_without_leaking_in_process(capsys, encoded):
    ran = 0

    @settings(FUZZ, max_examples=300)
    @given(
        password=passwords, tail=st.sampled_from(["127.0.0.1:5432/app", "[::1]/app?schema=s", "h:1/d?sslmode=disable"])
    )
    def check(password, tail):
        nonlocal ran
        ran += 1
        url = url_with(password, encoded, tail)
        redactor = Redactor()
        redactor.add(url)
        try:
            database = Database(Secret(url), source="$APP_URL")
        except ConfigError as error:
            shown = error.message + json.dumps(error.suggestions)
            assert leaked(shown) == [] and "Percent-encode" in shown
            assert not encoded or "\x00" in password, error.message  # only NUL cannot reach libpq
            return
        assert leaked(str(database.url) + repr(database.url) + database.name_for_display) == []
        if encoded:
            assert database.client_env()["PGPASSWORD"] == password
        else:
            # A raw password may parse only where urllib and libpq agree on every piece.
            assert database.conninfo_params()["password"] == password
        # Whatever a parser or a database error quotes of it, in any printed form, is masked.
        for text in (password, json.dumps(password), repr(password), quote(password), str(database.conninfo_params())):
            assert leaked(redactor.redact(text)) == [], text

    check()
    report(capsys, f"database URLs ({'encoded' if encoded else 'raw'} passwords), in-process", ran)
    assert ran >= 100


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(alphabet=SPECIALS + "ab"),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
KEYS = ["database", "migration_tool", "environments", "production", "database_url_env", "protected",
        "backup", "provider", "keep_last", "health_checks", "lock_wait_seconds", "lock_retry", "retries",
        "faber_schema", "prisma"]  # fmt: skip


def mutate(config: dict, path: list[str], value: object) -> dict:
    target = config
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[path[-1]] = value
    return config


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_config_files_load_or_are_refused_as_config_errors(capsys, tmp_path):
    ran = 0
    base = {"database": {"migration_tool": "prisma", "environments": {"production": {"database_url_env": "X"}}}}
    path = tmp_path / CONFIG_PATH
    path.parent.mkdir(parents=True)

    @settings(FUZZ, max_examples=300)
    @given(
        edits=st.lists(st.tuples(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4), json_values), max_size=3),
        raw=st.one_of(st.none(), st.text(alphabet='{}[]",:0123456789 \\\x00ae', max_size=200)),
    )
    def check(edits, raw):
        nonlocal ran
        ran += 1
        config = json.loads(json.dumps(base))
        for keys, value in edits:
            config = mutate(config, keys, value)
        path.write_text(raw if raw is not None else json.dumps(config))
        try:
            loaded = load_config(tmp_path)
        except ConfigError as error:
            assert error.message.startswith(("Invalid configuration", "Malformed configuration", "Cannot read"))
            return
        assert isinstance(loaded, FaberConfig)
        for name in loaded.database.environments:
            loaded.environment(name)  # every accepted environment resolves

    check()
    report(capsys, "config files, in-process", ran)
    assert ran >= 100


folder_names = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]), min_size=1, max_size=24
).filter(lambda name: name not in (".", "..") and len(name.encode()) < 200)
ENTRY_KINDS = ["sql", "latin1", "nul", "symlink_in", "symlink_out", "proc_environ", "fifo", "no_script",
               "plain_file", "folder_symlink_out", "bom"]  # fmt: skip
BAD_KINDS = {"latin1", "nul", "symlink_out", "proc_environ", "fifo", "folder_symlink_out"}


def build_layout(root: Path, outside: Path, entries: dict[str, str]) -> None:
    for name, kind in entries.items():
        folder = root / name
        if kind == "plain_file":
            folder.write_text("not a migration folder")
            continue
        if kind == "folder_symlink_out":
            folder.symlink_to(outside)
            continue
        folder.mkdir()
        script = folder / "migration.sql"
        if kind == "sql":
            script.write_text(f"-- {name!r}\nSELECT 1;")
        elif kind == "bom":
            script.write_bytes("\ufeffSELECT 'é';".encode())
        elif kind == "latin1":
            script.write_bytes(b"SELECT 'Jos\xe9';")
        elif kind == "nul":
            script.write_bytes(b"SELECT 1;\x00")
        elif kind == "symlink_in":
            (folder / "real.sql").write_text("SELECT 2;")
            script.symlink_to("real.sql")
        elif kind == "symlink_out":
            script.symlink_to(outside / "migration.sql")
        elif kind == "proc_environ":
            script.symlink_to("/proc/self/environ")
        elif kind == "fifo":
            os.mkfifo(script)


def test_migration_folder_layouts_are_read_or_refused(capsys, faber_project, run_context, monkeypatch, tmp_path):
    from faber_prisma.migrations import read_migrations

    ran = 0
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "migration.sql").write_text(f"SELECT '{CANARY_PIECES[0]}';")
    project = faber_project(
        {"database": {"migration_tool": "prisma", "environments": {"production": {"database_url_env": "APP_URL"}}}}
    )
    monkeypatch.setenv("APP_URL", "postgresql://app@127.0.0.1/app")
    context = run_context(project)

    @settings(FUZZ, max_examples=150)
    @given(entries=st.dictionaries(folder_names, st.sampled_from(ENTRY_KINDS), min_size=1, max_size=5))
    def check(entries):
        nonlocal ran
        ran += 1
        with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
            root = Path(scratch) / "migrations"
            root.mkdir()
            build_layout(root, outside, entries)
            config = context.config.model_copy(deep=True)
            config.database.__pydantic_extra__["prisma"] = {"migrations_dir": str(root)}
            try:
                folders = read_migrations(dataclasses.replace(context, config=config))
            except ConfigError as error:
                assert set(entries.values()) & BAD_KINDS, error.message
                assert leaked(error.message) == []
                assert "\x1b" not in escape_controls(error.message)
                return
            assert not set(entries.values()) & BAD_KINDS
            expected = sorted(name for name, kind in entries.items() if kind != "plain_file")
            assert [folder.name for folder in folders] == expected
            assert all(leaked(folder.sql) == [] for folder in folders)

    check()
    report(capsys, "migration folder layouts and names, in-process", ran)
    assert ran >= 100


statement_parts = st.sampled_from(
    [
        "SELECT 1",
        "INSERT INTO t VALUES (1, 'a;b', E'c\\';d', $$e;f$$, \"g;h\")",
        "INSERT INTO t VALUES (2.5e3, 'x''y', B'101', U&'d\\0061t')",
        'CREATE TABLE "t;1" (id int)',
        "DO $body$ BEGIN PERFORM 1; END $body$",
        "/* c; /* nested; */ */ SELECT 2",
        "-- comment; here\nSELECT 3",
        "CREATE INDEX CONCURRENTLY i ON t (a)",
        "VACUUM t",
        "SELECT a$b$c FROM t",
        "SELECT $1",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
        "SELECT 'unterminated",
        "SELECT (",
        "SELECT 1 2",
        "",
        "  ",
    ]
)


def test_the_linear_splitter_agrees_with_the_parser(capsys):
    """Statement by statement, parse_script splits and refuses exactly as PostgreSQL's parser does."""
    ran = 0

    @settings(FUZZ, max_examples=400)
    @given(parts=st.lists(statement_parts, max_size=6), trailing=st.sampled_from(["", ";", "; -- end\n", "\n"]))
    def check(parts, trailing):
        nonlocal ran
        ran += 1
        sql = ";\n".join(parts) + trailing
        try:
            expected = [text.strip() for text in pglast.split(sql)]
        except ParseError:
            with pytest.raises(ParseError):
                parse_script(sql)
            return
        script = parse_script(sql)
        assert list(script.statements()) == expected
        nodes = [raw.stmt for raw in pglast.parse_sql(sql)]
        assert [type(script.node(i)) for i in range(len(script))] == [type(node) for node in nodes]

    check()
    report(capsys, "migration SQL split against the parser, in-process", ran)
    assert ran >= 200


@pytest.fixture
def wrapped_path(tmp_path):
    """PATH with recording wrappers for the programs faber starts (their argv is a channel too)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    log = tmp_path / "argv.log"
    for program in ("pg_dump", "pg_restore", "psql", "git"):
        real = shutil.which(program)
        if real is None:
            continue
        script = directory / program
        script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$0 $*\" >> '{log}'\nexec '{real}' \"$@\"\n")
        script.chmod(0o755)
    return f"{directory}{os.pathsep}{os.environ['PATH']}", log


def test_full_cli_runs_with_hostile_passwords_and_migration_names(
    capsys, faber_project, run_faber, database_url, wrapped_path
):
    """Real deploys (backup, history row, audit log) with fuzzed passwords and migration names."""
    ran = 0
    path, argv_log = wrapped_path
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_URL", "lock_wait_seconds": 5}},
            }
        },
        {"migrations/000_base.sql": "CREATE TABLE base (id bigint PRIMARY KEY);"},
    )
    outputs: list[str] = []

    @settings(FUZZ, max_examples=10, phases=[Phase.generate])  # each example is two full CLI runs
    @given(
        password=passwords.map(lambda password: password.replace("\x00", "")),  # an env var cannot hold NUL
        encoded=st.booleans(),
        name=st.text(alphabet=string.ascii_letters + "\x1b[];\x07 \t\u202e", min_size=1, max_size=12),
    )
    def check(password, encoded, name):
        nonlocal ran
        ran += 1
        (project / "migrations" / f"{ran:03d}_{name}.sql").write_text(f"CREATE TABLE fuzz_{ran} (id bigint);")
        url = url_with(password, encoded, database_url.rsplit("@", 1)[1], user="postgres")
        env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": url, "PATH": path, "FABER_DEBUG": "1"}
        human = run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env)
        as_json = run_faber("status", "production", "--json", "--cwd", str(project), env=env)
        assert {human.returncode, as_json.returncode} <= DOCUMENTED_EXIT_CODES
        assert "Traceback" not in human.output + as_json.output
        assert "\x1b" not in human.output and "\u202e" not in human.output
        json.loads(as_json.stdout)
        if encoded:
            assert human.returncode == 0, human.output
        outputs.append(human.output + as_json.output)

    check()
    channels = {"stdout and stderr": "\n".join(outputs)}
    channels |= {
        str(p): p.read_bytes().decode(errors="replace") for p in (project / ".faber").rglob("*") if p.is_file()
    }
    channels["child argv"] = argv_log.read_text() if argv_log.exists() else ""
    with psycopg.connect(database_url) as conn:
        channels["history table"] = "\n".join(
            row[0] for row in conn.execute("SELECT row_to_json(d)::text FROM faber.faber_deployments d")
        )
    assert {channel: leaked(text) for channel, text in channels.items() if leaked(text)} == {}
    assert "/pg_dump " in channels["child argv"] and channels["history table"]
    report(capsys, "full CLI runs (deploy + status) with fuzzed passwords and names", ran)


git_file_names = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]), min_size=1, max_size=16
).filter(lambda name: name not in (".", "..", ".git") and len(name.encode()) < 200)
GIT_STATES = ["committed", "edited", "staged_edit", "untracked", "staged_new", "assume_unchanged_edit"]


def test_the_git_check_finds_every_uncommitted_migration_whatever_its_name(capsys, tmp_path):
    """Deploy mode's git check (``uncommitted_files``) on names with quotes, newlines, leading
    dashes, glob and pathspec magic (``*``, ``:(top)``), non-ASCII, through a symlinked folder:
    a migration is reported exactly when its file is not as committed."""
    import subprocess

    from faber_core.committed import uncommitted_files

    ran = 0
    identity = ["-c", "user.email=dev@example.com", "-c", "user.name=dev"]

    def git(repository: Path, *args: str) -> None:
        subprocess.run(["git", "-C", str(repository), *identity, *args], check=True, capture_output=True)

    @settings(FUZZ, max_examples=60)
    @given(
        files=st.dictionaries(git_file_names, st.sampled_from(GIT_STATES), min_size=1, max_size=4),
        linked=st.booleans(),
    )
    # A carriage return in a name: git's output was read with newlines translated, "\r" became "\n".
    @example(files={"0": "committed", "\r": "edited"}, linked=False)
    def check(files, linked):
        nonlocal ran
        ran += 1
        with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
            project = Path(scratch)
            real = project / ("db/migrations" if linked else "migrations")
            real.mkdir(parents=True)
            if linked:  # migrations/ is a committed symlink to db/migrations/
                (project / "migrations").symlink_to("db/migrations")
            git(project, "init", "-q")
            (project / "README").write_text("release\n")
            for name, state in files.items():
                if state not in ("untracked", "staged_new"):
                    (real / name).write_text("SELECT 1;")
            git(project, "add", "-A")
            git(project, "commit", "-q", "-m", "release")
            for name, state in files.items():
                if state != "committed":
                    (real / name).write_text("SELECT 2;")
                if state in ("staged_edit", "staged_new"):
                    git(project, "add", "--", str(real / name))
                if state == "assume_unchanged_edit":
                    git(project, "update-index", "--assume-unchanged", "--", str(real / name))

            check = uncommitted_files(project, {name: f"migrations/{name}" for name in files}, Redactor())

            assert check.error is None and check.unchecked is None, check
            assert set(check.uncommitted) == {name for name, state in files.items() if state != "committed"}

    check()
    report(capsys, "git check on hostile file names, in-process", ran)
    assert ran >= 30


PIECE_DELIMITERS = ['"', "'", "@", ":", "/", " ", "\n", "(", "=", "%40", ""]


def test_a_password_piece_is_masked_between_any_delimiters_and_kept_inside_longer_words(capsys):
    """A parser prints the pieces it cut from a password between its delimiters or its own quotes:
    masked there, whatever stands around them. The same letters and digits inside a longer word
    (a backup id ``backup-20261128-...`` for the piece ``2026``) are no piece: left as they are.
    JSON keys that are names (a document's fields) are kept; other keys are redacted as texts."""
    ran = 0
    piece = st.text(alphabet=string.ascii_letters + string.digits, min_size=4, max_size=10)

    @settings(FUZZ, max_examples=400)
    @given(
        pieces=st.lists(piece, min_size=2, max_size=3, unique=True),
        separator=st.sampled_from(list("@/:?#&= ")),
        before=st.sampled_from(PIECE_DELIMITERS),
        after=st.sampled_from(PIECE_DELIMITERS),
        glue=st.sampled_from(["x", "7", "_", "é"]),
    )
    def check(pieces, separator, before, after, glue):
        nonlocal ran
        ran += 1
        password = separator.join(pieces)
        redactor = Redactor()
        redactor.add(f"postgresql://app:{quote(password, safe='')}@db.internal/app")
        for cut in pieces:
            shown = redactor.redact(f"could not use {before}{cut}{after} here")
            assert cut not in shown, shown
            inside = f"id-{glue}{cut}{glue}-1"
            if not any(other in inside for other in pieces if other != cut):
                assert redactor.redact(inside) == inside
        assert redactor.redact_data({"status": {"name": 1}}) == {"status": {"name": 1}}
        assert leaked_pieces(json.dumps(redactor.redact_data({f"public.{pieces[0]}": pieces[1]})), pieces) == []

    check()
    report(capsys, "password pieces between delimiters and inside words, in-process", ran)
    assert ran >= 200


def leaked_pieces(text: str, pieces: list[str]) -> list[str]:
    return [piece for piece in pieces if piece in text]
