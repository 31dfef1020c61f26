"""The quick start: `faber init --tool sequelize`, then what its output says to do next."""

from __future__ import annotations

import json
from pathlib import Path

from faber_core.config import CONFIG_PATH


def test_init_then_the_next_step_applies_the_example_migration(tmp_path, run_faber, sequelize_node_modules):
    project = tmp_path / "demo"

    init = run_faber("init", "--tool", "sequelize", "--cwd", str(project))
    assert init.returncode == 0, init.output
    assert "Next: npm install sequelize pg, then faber migrate dev" in init.stdout
    # What `npm install sequelize pg` leaves in the project.
    (project / "node_modules").symlink_to(sequelize_node_modules, target_is_directory=True)
    first = run_faber("migrate", "dev", "--json", "--cwd", str(project))
    again = run_faber("migrate", "dev", "--json", "--cwd", str(project))

    assert first.returncode == 0, first.output
    [applied] = first.json["result"]["migrations"]
    assert applied["name"].endswith("-create-example-items.js")
    assert again.json["result"]["message"] == "No pending migrations"


# A project that keeps its config where its .sequelizerc says, naming MySQL there.
SEQUELIZERC = """const path = require("path");
module.exports = {
  config: path.resolve("database", "conf", "cfg.js"),
  "migrations-path": path.resolve("database", "mig"),
};
"""
MYSQL_CONFIG = 'module.exports = { development: { dialect: "mysql", host: "db.invalid" } };\n'


def mysql_project_with_its_own_layout(root: Path, node_modules: Path) -> Path:
    (root / "database" / "conf").mkdir(parents=True)
    (root / ".sequelizerc").write_text(SEQUELIZERC)
    (root / "database" / "conf" / "cfg.js").write_text(MYSQL_CONFIG)
    (root / "node_modules").symlink_to(node_modules, target_is_directory=True)
    return root


def test_init_reads_the_config_sequelizerc_names_and_gives_a_mysql_project_dev_on_its_own_server(
    tmp_path, run_faber, sequelize_node_modules
):
    # The config was looked for in config/ only: dev got the embedded PostgreSQL, which `faber migrate
    # dev` then refused for the config's dialect.
    project = mysql_project_with_its_own_layout(tmp_path / "app", sequelize_node_modules)

    init = run_faber("init", "--json", "--cwd", str(project))

    assert init.returncode == 0, init.output
    assert init.json["result"]["found"] == [".sequelizerc", "database/conf/cfg.js"]
    assert init.json["result"]["next"].startswith("export DEV_DATABASE_URL=")
    config = json.loads((project / CONFIG_PATH).read_text())
    assert config["database"]["environments"]["dev"] == {"database_url_env": "DEV_DATABASE_URL"}


def test_dev_on_the_embedded_postgresql_says_to_give_a_mysql_project_a_database_of_its_own(
    tmp_path, run_faber, sequelize_node_modules
):
    project = mysql_project_with_its_own_layout(tmp_path / "app", sequelize_node_modules)
    assert run_faber("init", "--cwd", str(project)).returncode == 0
    config_path = project / CONFIG_PATH
    config = json.loads(config_path.read_text())
    config["database"]["environments"]["dev"] = {}  # the embedded PostgreSQL
    config_path.write_text(json.dumps(config))

    run = run_faber("migrate", "dev", "--json", "--cwd", str(project))

    assert (run.returncode, run.json["code"]) == (2, "CONFIG_INVALID"), run.output
    assert run.json["error"] == "The environment's database is PostgreSQL; this config's dialect is mysql"
    [advice] = run.json["recovery"]["suggestions"]
    assert "set database.environments.dev.database_url_env to a variable holding a MySQL/MariaDB URL" in advice
    assert "DEV_DATABASE_URL" in advice
