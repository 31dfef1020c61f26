"""`faber init` in a project that already uses its tool: the config points at the project's own
migrations folder or data source, found as the tool finds them, and no example is added beside them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from faber_core import api
from faber_core.config import CONFIG_PATH

SCHEMA = 'datasource db {\n  provider = "postgresql"\n  url = env("DATABASE_URL")\n}\n'


def write(project: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(text)


def initialised(project: Path, tool: str | None = None) -> tuple[dict, dict]:
    document = api.init(tool, working_directory=project)
    assert document.status == "success", document
    config = json.loads((project / CONFIG_PATH).read_text())["database"]
    return document.result, config


def files_under(project: Path) -> set[str]:
    return {path.relative_to(project).as_posix() for path in project.rglob("*") if path.is_file()}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"package.json": '{"prisma": {"schema": "db/schema.prisma"}}', "db/schema.prisma": SCHEMA},
            "db/migrations",
            id="package.json names the schema file",
        ),
        pytest.param(
            {"package.json": '{"prisma": {"schema": "./src/prisma"}}', "src/prisma/schema.prisma": SCHEMA},
            "src/prisma/migrations",
            id="package.json names a schema folder",
        ),
        pytest.param(
            {
                "prisma.config.ts": 'import { defineConfig } from "prisma/config";\n'
                'export default defineConfig({\n  schema: "database/schema.prisma",\n'
                '  migrations: {\n    path: "database/history",\n  },\n});\n',
                "database/schema.prisma": SCHEMA,
            },
            "database/history",
            id="prisma.config.ts names the migrations path",
        ),
        pytest.param({"schema.prisma": SCHEMA}, "migrations", id="schema at the top"),
        pytest.param(
            {
                "packages/db/prisma/migrations/migration_lock.toml": 'provider = "postgresql"\n',
                "packages/db/prisma/migrations/20240101000000_init/migration.sql": "CREATE TABLE a (id int);\n",
                "node_modules/some-package/prisma/migrations/migration_lock.toml": 'provider = "postgresql"\n',
            },
            "packages/db/prisma/migrations",
            id="migration_lock.toml outside installed packages",
        ),
    ],
)
def test_prisma_projects_keep_their_own_migrations_folder(tmp_path, files, expected):
    write(tmp_path, files)
    before = files_under(tmp_path)

    result, config = initialised(tmp_path)

    assert result["tool"] == "prisma"
    assert config["prisma"]["migrations_dir"] == expected
    assert result["found"] == [expected]
    assert files_under(tmp_path) - before == {str(CONFIG_PATH), ".faber/.gitignore"}


def test_a_prisma_project_without_migrations_yet_gets_no_example_but_the_folder_its_config_names(tmp_path):
    """Right after ``prisma init``: no example migration beside the project's schema, but the
    (empty) folder the config points at, so that the ``next`` command runs rather than failing on
    a missing folder."""
    write(tmp_path, {"prisma/schema.prisma": SCHEMA})

    result, config = initialised(tmp_path, "prisma")

    assert config["prisma"]["migrations_dir"] == "prisma/migrations"
    assert result["written"] == [str(CONFIG_PATH), ".faber/.gitignore", "prisma/migrations"]
    assert list((tmp_path / "prisma/migrations").iterdir()) == []
    assert result["next"] == "faber migrate dev"


def test_a_typeorm_project_keeps_its_data_source_and_migrations(tmp_path):
    write(
        tmp_path,
        {
            "package.json": '{"dependencies": {"typeorm": "^0.3.20", "pg": "^8"}}',
            "src/data-source.ts": "export const AppDataSource = null;\n",
            "dist/data-source.js": "exports.AppDataSource = null;\n",
            "src/migrations/1700000000000-Init.ts": "export class Init1700000000000 {}\n",
        },
    )
    before = files_under(tmp_path)

    result, config = initialised(tmp_path)

    assert result["tool"] == "typeorm" and result["next"] == "faber migrate dev"
    assert config["typeorm"] == {"data_source": "src/data-source.ts"}
    assert files_under(tmp_path) - before == {str(CONFIG_PATH), ".faber/.gitignore"}


def test_an_existing_top_level_data_source_is_not_overwritten(tmp_path):
    own = "// the project's own\nmodule.exports = {};\n"
    write(tmp_path, {"data-source.js": own})

    result, config = initialised(tmp_path, "typeorm")

    assert (tmp_path / "data-source.js").read_text() == own
    assert config["typeorm"] == {"data_source": "data-source.js"}
    assert not (tmp_path / "migrations").exists()


def test_a_sequelize_project_with_its_own_layout_gets_only_the_config(tmp_path):
    write(
        tmp_path,
        {
            "package.json": '{"dependencies": {"sequelize": "^6"}, "devDependencies": {"sequelize-cli": "^6"}}',
            ".sequelizerc": "module.exports = {'migrations-path': require('path').resolve('db', 'migrate')};\n",
        },
    )
    before = files_under(tmp_path)

    result, config = initialised(tmp_path)

    assert result["tool"] == "sequelize" and config["migration_tool"] == "sequelize"
    assert result["found"] == [".sequelizerc"]
    assert files_under(tmp_path) - before == {str(CONFIG_PATH), ".faber/.gitignore"}


def test_a_project_using_two_tools_must_choose_and_nothing_is_written(tmp_path):
    write(tmp_path, {"package.json": '{"dependencies": {"@prisma/client": "^5", "typeorm": "^0.3"}}'})

    document = api.init(working_directory=tmp_path)

    assert document.status == "error" and document.code == "CONFIG_INVALID"
    assert "prisma and typeorm" in document.error
    assert "faber init --tool prisma" in document.recovery.suggestions[0]
    assert files_under(tmp_path) == {"package.json"}
    chosen, config = initialised(tmp_path, "typeorm")
    assert chosen["tool"] == "typeorm" and config["migration_tool"] == "typeorm"


def test_an_empty_folder_still_gets_the_prisma_starter(tmp_path):
    result, config = initialised(tmp_path)

    assert result["tool"] == "prisma" and result["found"] == []
    assert config["prisma"]["migrations_dir"] == "prisma/migrations"
    assert any(path.endswith("_create_example_items/migration.sql") for path in result["written"])


@pytest.mark.parametrize(
    "package_json",
    [
        '{"dependencies": ["typeorm"], "prisma": "db/schema.prisma"}',
        '{"prisma": {"schema": 42}, "devDependencies": null}',
        "[1, 2]",
        '{"dependencies": {"typeorm": "^0.3"',
        "\udcff not json",
        # deeper than Python's JSON parser follows (it was INTERNAL_ERROR, a RecursionError), under the 1 MB read
        pytest.param("[" * 100_000 + "]" * 100_000, id="nested-100000-deep"),
    ],
)
def test_a_package_json_of_any_shape_gives_the_prisma_starter_not_a_traceback(tmp_path, package_json):
    (tmp_path / "package.json").write_text(package_json, errors="surrogateescape")

    result, config = initialised(tmp_path)

    assert result["tool"] == "prisma" and config["prisma"]["migrations_dir"] == "prisma/migrations"


def test_a_schema_outside_the_project_folder_is_followed_there(tmp_path):
    project = tmp_path / "api"
    write(
        tmp_path,
        {"shared/schema.prisma": SCHEMA, "api/package.json": '{"prisma": {"schema": "../shared/schema.prisma"}}'},
    )

    result, config = initialised(project)

    assert config["prisma"]["migrations_dir"] == "../shared/migrations"


def test_a_fifo_or_device_named_like_a_project_file_does_not_hang_init(tmp_path):
    os.mkfifo(tmp_path / "package.json")
    (tmp_path / "prisma.config.ts").symlink_to("/dev/zero")

    result, config = initialised(tmp_path)

    assert result["tool"] == "prisma" and config["prisma"]["migrations_dir"] == "prisma/migrations"


@pytest.mark.parametrize(
    ("tool", "files"),
    [
        pytest.param(
            "prisma",
            {
                "prisma/migrations/migration_lock.toml": 'provider = "mysql"\n',
                "prisma/migrations/1_a/migration.sql": "",
            },
            id="prisma-migration-lock",
        ),
        pytest.param("prisma", {"prisma/schema.prisma": SCHEMA.replace('"postgresql"', '"mysql"')}, id="prisma-schema"),
        pytest.param("typeorm", {"src/data-source.ts": 'new DataSource({ type: "mariadb", url })'}, id="typeorm"),
        pytest.param(
            "sequelize",
            {".sequelizerc": "", "config/config.json": '{"development": {"dialect": "mysql"}}'},
            id="sequelize-json",
        ),
        pytest.param("sequelize", {".sequelizerc": "", "config/config.js": "dialect: 'mariadb',"}, id="sequelize-js"),
    ],
)
def test_a_mysql_project_gets_dev_on_its_own_server_not_the_embedded_postgresql(tmp_path, tool, files):
    # Its migrations are MySQL's: on the embedded PostgreSQL, `faber migrate dev` refused them as SQL
    # that does not parse.
    write(tmp_path, files)

    result, config = initialised(tmp_path, tool)

    assert config["environments"]["dev"] == {"database_url_env": "DEV_DATABASE_URL"}
    assert result["next"].startswith("export DEV_DATABASE_URL=")


def test_a_postgresql_project_keeps_dev_on_the_embedded_server(tmp_path):
    write(tmp_path, {"prisma/migrations/migration_lock.toml": 'provider = "postgresql"\n'})

    result, config = initialised(tmp_path, "prisma")

    assert config["environments"]["dev"] == {}
    assert result["next"] == "faber migrate dev"


@pytest.mark.parametrize("configured", ["prisma", "sequelize"])
def test_a_config_naming_another_tool_than_the_project_s_says_which_it_shows(
    faber_project, run_faber, database_url, configured
):
    """A config copied from another project: the tool's files are missing, and the advice was to
    install the other ORM or create an empty Prisma folder (whose deploy then passes, applying nothing)."""
    environments = {"staging": {"database_url_env": "APP_URL"}}
    project = faber_project(
        {"database": {"migration_tool": configured, "environments": environments}},
        {"package.json": '{"dependencies": {"typeorm": "1.1.1", "pg": "8.23.1"}}', "data-source.js": "// TypeORM"},
    )

    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project), env={"APP_URL": database_url})

    assert (run.returncode, run.json["code"]) == (2, "CONFIG_INVALID"), run.output
    assert run.json["recovery"]["suggestions"][0] == (
        f"This project's package.json and files show typeorm, not {configured}: set database.migration_tool "
        'to "typeorm" in the config (faber init --tool typeorm --force writes a new one)'
    )


def test_a_typeorm_project_configured_by_ormconfig_json_is_told_it_needs_a_data_source(tmp_path):
    """TypeORM 0.2's ormconfig.json: the project's migrations are elsewhere; an example migration and
    a new data source beside them would deploy the example and never the project's own."""
    write(
        tmp_path,
        {
            "package.json": '{"dependencies": {"typeorm": "0.3.20", "pg": "8.11.0"}}',
            "ormconfig.json": '{"type": "postgres", "migrations": ["migration/*.js"]}',
            "migration/1600000000000-A.js": "module.exports = class A1600000000000 {};",
        },
    )

    document = api.init(None, working_directory=tmp_path)

    assert (document.status, document.code) == ("error", "CONFIG_INVALID"), document
    assert "configures TypeORM in ormconfig.json, which TypeORM 0.3 and later do not read" in document.error
    assert files_under(tmp_path) == {"package.json", "ormconfig.json", "migration/1600000000000-A.js"}
