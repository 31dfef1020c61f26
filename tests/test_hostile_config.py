"""Configuration a hurried operator writes: every mistake is exit 2 with what to fix, never a
setting silently ignored, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from faber_core.config import CONFIG_PATH, MAX_CONFIG_BYTES, MAX_REPORTED_PROBLEMS, load_config
from faber_core.errors import ConfigError
from faber_core.testing.fixtures import CANARY_PASSWORD, without_root_file_access

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}


def write_config(tmp_path, text: str):
    path = tmp_path / CONFIG_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return tmp_path


def production(**settings) -> dict:
    environment = {"database_url_env": "X", **settings}
    return {"database": {"migration_tool": "prisma", "environments": {"production": environment}}}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"database": {"migration_tol": "prisma"}}, "unknown setting 'migration_tol' (did you mean migration_tool?)"),
        ({"database": {"enviroments": {"production": {}}}}, "(did you mean environments?)"),
        ({"databse": {}}, "databse: unknown setting (did you mean database?)"),
        (production(protectd=True), "production.protectd: unknown setting (did you mean protected?)"),
        (production(lock_retry={"retrys": 2}), "lock_retry.retrys: unknown setting (did you mean retries?)"),
        (production(backup={"provder": "rds-snapshot"}), "unknown setting 'provder' (did you mean provider?)"),
        (production(backup={"keep_lst": 3}), "unknown setting 'keep_lst' (did you mean keep_last?)"),
        (production(protected="yes"), "production.protected: Input should be a valid boolean"),
        (production(auto_rollback=1), "production.auto_rollback: Input should be a valid boolean"),
        (production(lock_wait_seconds=1e999), "lock_wait_seconds: Input should be a finite number"),
        (production(lock_wait_seconds=10**9), "lock_wait_seconds: Input should be less than or equal to 86400"),
        (production(connect_timeout_seconds="10"), "connect_timeout_seconds: Input should be a valid integer"),
        # The deadline of the code migrations' lint rehearsal: 1e10 s overflowed the child processes' wait.
        (
            production(lint_rehearsal_seconds=1e10),
            "lint_rehearsal_seconds: Input should be less than or equal to 86400",
        ),
        ({"database": {"faber_schema": "public"}}, "faber_schema: 'public' holds other objects"),
        ({"database": {"faber_schema": "pg_catalog"}}, "faber_schema: 'pg_catalog' holds other objects"),
        ({"database": {"prisma": "prisma/migrations"}}, "'prisma' must be an object"),
        ({"database": {"environments": {"prod\x1b[2J": {}}}}, "invalid environment name 'prod\\x1b[2J'"),
        (production(database_url_env="URL $(id)"), "'URL $(id)' is not an environment variable name"),
    ],
)
def test_config_mistakes_are_refused_with_what_to_fix(tmp_path, config, expected):
    project = write_config(tmp_path, json.dumps(config))

    with pytest.raises(ConfigError) as raised:
        load_config(project)

    assert expected in raised.value.message


PASTED_URL = f"postgresql://app:{CANARY_PASSWORD}/x@db.internal:5432/app"
"""A database URL pasted into the config where a name belongs; the '/' in its password keeps the
mask of URL passwords in any text from finding it."""


@pytest.mark.parametrize(
    "config",
    [
        production(database_url_env=PASTED_URL),
        production(database_url_env=None, targets={"urls_env": PASTED_URL}),
        production(database_url_env=None, targets={"catalog": {"url_env": PASTED_URL, "query": "SELECT 1"}}),
        production(database_url_env=None, targets={"urls_env": "X"}, rollout={"waves": [PASTED_URL]}),
        {"database": {"migration_tool": "prisma", "faber_schema": PASTED_URL}},
        {"database": {"migration_tool": "prisma", "environments": {PASTED_URL: {}}}},
    ],
    ids=["database_url_env", "urls_env", "catalog.url_env", "rollout.waves", "faber_schema", "environment name"],
)
def test_a_url_pasted_where_a_name_belongs_is_refused_without_its_password(tmp_path, config):
    project = write_config(tmp_path, json.dumps(config))

    with pytest.raises(ConfigError) as raised:
        load_config(project)

    error = raised.value
    shown = json.dumps([error.message, error.suggestions, error.result])
    assert error.message.startswith("Invalid configuration") and CANARY_PASSWORD not in shown, shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested more than 64 levels deep"),
        ('{"database": {"faber_schema": "a", "faber_schema": "b"}}', "the key 'faber_schema' appears twice"),
        ('{"database": {"environments": {"production": {"lock_wait_seconds": NaN}}}}', "finite number"),
        ('{"database": ', "Malformed configuration"),
        ('"' + "\\" * 50_001, "Malformed configuration"),
    ],
    ids=["nested-100000-deep", "duplicate-key", "nan", "truncated", "50001-backslashes"],
)
def test_hostile_json_is_refused_without_recursion(tmp_path, text, expected):
    project = write_config(tmp_path, text)

    with pytest.raises(ConfigError) as raised:
        load_config(project)

    assert expected in raised.value.message


def test_a_config_with_thousands_of_problems_reports_the_first_ones_and_how_many_more(tmp_path):
    """Each problem was described (a spelling suggestion each) and printed: a 12 MB file of unknown
    keys took minutes and printed over 100 MB. The URL its problems quote stays masked."""
    unknown = {f"k{number}": 0 for number in range(5000)}
    project = write_config(tmp_path, json.dumps(production(database_url_env=PASTED_URL, **unknown)))

    with pytest.raises(ConfigError) as raised:
        load_config(project)

    problems = raised.value.result["problems"]
    assert len(problems) == MAX_REPORTED_PROBLEMS + 1 and problems[-1] == "and 4981 more problems", problems[-2:]
    assert "production.database_url_env: '***' is not an environment variable name" in raised.value.message
    assert CANARY_PASSWORD not in raised.value.message


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path):
    """Windows editors may save UTF-8 with a BOM; it was refused as malformed JSON."""
    path = write_config(tmp_path, "") / CONFIG_PATH
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(production(protected=False)).encode())

    assert load_config(tmp_path).environment("production").protected is False


def sqlfiles_project(faber_project, **environment):
    return faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_URL", "lock_wait_seconds": 1, **environment}},
            }
        },
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);"},
    )


def test_a_misspelt_tool_suggests_the_closest_installed_one(faber_project, run_faber, database_url):
    project = faber_project(
        {"database": {"migration_tool": "prism", "environments": {"production": {"database_url_env": "APP_URL"}}}}
    )

    run = run_faber("status", "production", "--json", "--cwd", str(project), env={"APP_URL": database_url})

    assert run.returncode == 2, run.output
    assert "did you mean prisma?" in run.json["error"]
    assert run.json["recovery"]["suggestions"] == ['Set "migration_tool": "prisma" in the database section']


def test_a_tool_section_no_installed_tool_owns_is_refused(faber_project, run_faber, database_url):
    project = faber_project(
        {
            "database": {
                "migration_tool": "prisma",
                "prism": {"migrations_dir": "db"},
                "environments": {"production": {"database_url_env": "APP_URL"}},
            }
        }
    )

    run = run_faber("status", "production", "--json", "--cwd", str(project), env={"APP_URL": database_url})

    assert run.returncode == 2 and "database.prism is not a setting" in run.json["error"]
    assert "(did you mean prisma?)" in run.json["error"]


def test_an_unknown_backup_provider_fails_even_a_dry_run(faber_project, run_faber, database_url):
    project = sqlfiles_project(faber_project, backup={"provider": "pgdump"})

    run = run_faber(
        "migrate", "production", "--dry-run", "--json", "--cwd", str(project), env={**SQLFILES, "APP_URL": database_url}
    )

    assert run.returncode == 2, run.output
    assert "backup provider 'pgdump'" in run.json["error"] and "(did you mean pg_dump?)" in run.json["error"]


def test_unknown_health_checks_are_a_config_error_not_a_pass(faber_project, run_faber, database_url):
    project = sqlfiles_project(faber_project, health_checks=["conectivity", "shema"])
    unreachable = database_url.replace("127.0.0.1:5432", "127.0.0.1:1")

    run = run_faber("health", "production", "--json", "--cwd", str(project), env={**SQLFILES, "APP_URL": unreachable})

    assert run.returncode == 2, run.output
    assert "'conectivity'" in run.json["error"] and "(did you mean connectivity?)" in run.json["error"]


TIMEOUTS = [
    "lock_timeout_seconds",
    "statement_timeout_seconds",
    "query_lock_timeout_seconds",
    "query_statement_timeout_seconds",
]


@pytest.mark.parametrize("setting", TIMEOUTS)
def test_a_timeout_shorter_than_a_millisecond_is_refused_as_it_would_round_to_off(
    faber_project, run_faber, database_url, query, setting
):
    """The database takes whole milliseconds and reads 0 as no timeout: 0.0004 s, sent as 0 ms,
    let a blocked migration wait for its lock without bound."""
    project = sqlfiles_project(faber_project, **{setting: 0.0004})

    run = run_faber(
        "migrate", "production", "--yes", "--json", "--cwd", str(project), env={**SQLFILES, "APP_URL": database_url}
    )

    assert run.returncode == 2 and run.json["code"] == "CONFIG_INVALID", run.output
    assert f"production.{setting}: 0.0004 s is shorter than 1 ms" in run.json["error"], run.output
    assert query("SELECT to_regclass('public.users')") == [(None,)]


def test_a_missing_migrations_folder_is_exit_2_naming_it(faber_project, run_faber, database_url):
    project = faber_project(
        {
            "database": {
                "migration_tool": "prisma",
                "prisma": {"migrations_dir": "db/migratons"},
                "environments": {"production": {"database_url_env": "APP_URL"}},
            }
        }
    )

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env={"APP_URL": database_url})

    assert run.returncode == 2, run.output
    assert run.json["error"] == "The migrations folder db/migratons does not exist"


def test_a_migrations_folder_name_too_long_for_the_system_is_exit_2_naming_the_setting(
    faber_project, run_faber, database_url
):
    project = faber_project(
        {
            "database": {
                "migration_tool": "prisma",
                "prisma": {"migrations_dir": "m" * 300},
                "environments": {"production": {"database_url_env": "APP_URL"}},
            }
        }
    )

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env={"APP_URL": database_url})

    assert run.returncode == 2, run.output
    assert run.json["error"] == f"Cannot read the migrations folder {'m' * 300}: File name too long", run.json
    assert "database.prisma.migrations_dir" in run.json["recovery"]["suggestions"][0]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"typeorm": {"data_source": "data-source\u0000.js"}}, "database.typeorm.data_source: holds a NUL"),
        ({"prisma": {"migrations_dir": "prisma/\udc80"}}, "database.prisma.migrations_dir: holds a NUL"),
        (
            {"environments": {"tenants": {"targets": {"file": "tenants\u0000.txt"}}}},
            "database.environments.tenants.targets.file: holds a NUL",
        ),
        ({"environments": {"production": {"\udc80": 1}}}, "database.environments.production.\\udc80: holds a NUL"),
    ],
    ids=["typeorm-data-source-nul", "prisma-folder-surrogate", "targets-file-nul", "surrogate-key"],
)
def test_a_nul_or_lone_surrogate_anywhere_in_the_config_is_exit_2_naming_where(
    faber_project, run_faber, database_url, section, expected
):
    """Neither can be in a path, a program's argument or SQL: a NUL in a Node runner's data source
    or a targets file's name was an unexpected error (exit 1) where it was used."""
    tool = next((name for name in ("typeorm", "prisma") if name in section), "sqlfiles")
    environments = {"production": {"database_url_env": "APP_URL"}, **section.get("environments", {})}
    tool_sections = {key: value for key, value in section.items() if key != "environments"}
    project = faber_project({"database": {"migration_tool": tool, **tool_sections, "environments": environments}})
    environment = "tenants" if "tenants" in environments else "production"
    env = {"APP_URL": database_url, **SQLFILES}

    run = run_faber("migrate", environment, "--yes", "--json", "--cwd", str(project), env=env)

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID" and expected in run.json["error"], run.json
    assert "Traceback" not in run.stderr


def test_a_faber_schema_holding_application_objects_is_refused_before_anything(
    faber_project, run_faber, database_url, query
):
    query("CREATE SCHEMA ops; CREATE TABLE ops.invoices (id int)")
    project = sqlfiles_project(faber_project)
    config_path = project / CONFIG_PATH
    config = json.loads(config_path.read_text())
    config["database"]["faber_schema"] = "ops"
    config_path.write_text(json.dumps(config))

    run = run_faber(
        "migrate", "production", "--yes", "--json", "--cwd", str(project), env={**SQLFILES, "APP_URL": database_url}
    )

    assert run.returncode == 2, run.output
    assert "holds objects that are not faber's (invoices)" in run.json["error"]
    assert query("SELECT to_regclass('public.users')") == [(None,)]
    assert not (project / ".faber" / "backups").exists()
    with pytest.raises(psycopg.errors.UndefinedTable):
        query("SELECT 1 FROM ops.faber_deployments")


def test_the_application_schema_cannot_be_faber_schema(faber_project, run_faber, database_url):
    project = sqlfiles_project(faber_project)

    run = run_faber(
        "status",
        "production",
        "--json",
        "--cwd",
        str(project),
        env={**SQLFILES, "APP_URL": database_url + "?schema=faber"},
    )

    assert run.returncode == 2 and "which is faber_schema" in run.json["error"]


def test_provider_settings_beside_provider_are_left_to_the_provider(tmp_path):
    """rds-snapshot's "profile" is close to "provider" but is its own setting, not a misspelling."""
    project = write_config(
        tmp_path, json.dumps(production(backup={"provider": "rds-snapshot", "profile": "ops", "region": "eu-west-1"}))
    )

    settings = load_config(project).environment("production")

    assert settings.backup.provider == "rds-snapshot" and settings.backup.model_extra["profile"] == "ops"


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_config_that_is_a_fifo_or_a_device_is_named_as_such_without_reading_it(tmp_path, kind):
    path = tmp_path / CONFIG_PATH
    path.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")

    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path)

    assert refused.value.message == f"The configuration {path} is not a regular file (a FIFO, device or socket)"


def test_a_config_larger_than_any_config_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / CONFIG_PATH
    path.parent.mkdir(parents=True)
    with path.open("wb") as sparse:  # a hole: no disk used, but a size no config has
        sparse.truncate(MAX_CONFIG_BYTES + 1)

    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path)

    assert refused.value.message == f"The configuration {path} is larger than 16 MiB: refused"


@pytest.mark.parametrize("locked", ["project", "config-folder"])
def test_a_project_faber_may_not_enter_is_exit_2_naming_the_config(tmp_path, locked):
    """A request's working_directory (or FABER_DB_CWD) naming another user's project (mode 700),
    or a project whose .fractary faber may not search, was an unexpected error (PermissionError,
    exit 1, "please report this as a bug")."""
    project = write_config(tmp_path / "project", json.dumps(production()))
    folder = project if locked == "project" else project / ".fractary"
    request = {"operation": "preview-migrations", "parameters": {"environment": "production"}}
    request["parameters"]["working_directory"] = str(project)
    os.chmod(folder, 0o000)
    try:
        run = subprocess.run(
            [*without_root_file_access(), sys.executable, "-m", "faber_core", "request"],
            input=json.dumps(request),
            env={**os.environ, "X": "postgresql://127.0.0.1:1/app"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.chmod(folder, 0o755)  # for the temporary folder's removal

    assert run.returncode == 2, run.stdout + run.stderr
    document = json.loads(run.stdout)
    assert document["code"] == "CONFIG_INVALID" and document["operation"] == "preview-migrations", document
    assert document["error"] == (
        f"Cannot read {CONFIG_PATH}: [Errno 13] Permission denied: '{project / CONFIG_PATH}'"
    ), document
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["status", "{name}", "--json"],
        ["migrate", "{name}", "--yes"],
        ["rollback", "{name}", "--yes", "--json"],
        ["backup", "{name}"],
        ["request", "--yes"],
    ],
    ids=["status", "migrate", "rollback", "backup", "request"],
)
def test_an_environment_name_a_hundred_kilobytes_long_is_refused_by_its_start_and_length(tmp_path, run_faber, args):
    """A name no environment can have (over 63 characters) is not sent back whole: the document and
    the message show its start and how long it was."""
    project = write_config(tmp_path, json.dumps(production()))
    name = "prod" * 25_000
    parameters = {"environment": name, "working_directory": str(project)}
    request = json.dumps({"operation": "deploy-migrations", "parameters": parameters})
    arguments = [arg.format(name=name) for arg in args] + ([] if args[0] == "request" else ["--cwd", str(project)])

    run = run_faber(*arguments, env=SQLFILES, input=request)

    assert run.returncode == 2, run.output[:2000]
    assert "Invalid environment name: 'prodprod" in run.output
    assert "(100000 characters)" in run.output
    assert len(run.output) < 2_000, run.output[:2000]


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("../etc", "Invalid environment name: '..' (the environment of '../etc': ENVIRONMENT/TARGET"),
        ("/etc/passwd", "Invalid environment name: '' (the environment of '/etc/passwd': ENVIRONMENT/TARGET"),
        ("staging/one", "Unknown environment: staging (the environment of 'staging/one': ENVIRONMENT/TARGET"),
    ],
)
def test_a_name_with_a_slash_is_refused_naming_what_was_asked_for(tmp_path, run_faber, name, said):
    # The part before the '/' (a fleet's name) was refused alone: '../etc' read as a refused '..'.
    project = write_config(tmp_path, json.dumps(production()))

    run = run_faber("status", name, "--json", "--cwd", str(project), env=SQLFILES)

    assert run.returncode == 2 and run.json["code"] == "CONFIG_INVALID", run.output
    assert run.json["error"].startswith(said), run.json["error"]
