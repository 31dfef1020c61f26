"""Plugin options: a tool or provider declares a pydantic model; faber validates its config section
before any run, as strictly as its own settings, and lists it in `faber config schema`."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ConfigDict, Field

from faber_core import hookimpl
from faber_core.context import open_context
from faber_core.errors import ConfigError
from faber_core.models import BackupProviderInfo, ToolInfo
from faber_core.plugins import Plugins


class Layout(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: str = "migrations"


class SqlOptions(BaseModel):
    """No ``extra="forbid"`` here: faber refuses unknown keys anyway."""

    schema_name: str = Field("public", min_length=1)
    batch: bool = False
    layout: Layout = Field(default_factory=Layout)


class Optioned:
    @hookimpl
    def faber_migration_tools(self):
        return [ToolInfo(name="sqlopts", options=SqlOptions)]

    @hookimpl
    def faber_backup_providers(self):
        return [BackupProviderInfo(name="tape", options=Layout)]


@pytest.fixture
def configure(plugin_manager, faber_project, database_url, monkeypatch):
    """``configure(tool_section, production_backup, staging_backup) -> (Plugins, RunContext)``."""
    plugin_manager.register(Optioned(), name="optioned")
    monkeypatch.setenv("APP_URL", database_url)

    def make(section=None, backup=None, staging_backup=None):
        environments = {
            "production": {"database_url_env": "APP_URL", "backup": backup or {"provider": "tape"}},
            "staging": {"database_url_env": "APP_URL", "backup": staging_backup or {"provider": "pg_dump"}},
        }
        database = {"migration_tool": "sqlopts", "environments": environments}
        project = faber_project({"database": database | ({"sqlopts": section} if section is not None else {})})
        return Plugins(plugin_manager), open_context(project, "production", "deploy-migrations")

    return make


def refused(plugins: Plugins, context) -> str:
    with pytest.raises(ConfigError) as raised:
        plugins.check_config(context)
    return raised.value.message


def test_valid_options_reach_the_plugin_typed(configure):
    plugins, context = configure(
        {"schema_name": "app", "layout": {"folder": "db"}}, {"provider": "tape", "folder": "t"}
    )

    plugins.check_config(context)

    options = context.tool_options(SqlOptions)
    assert (options.schema_name, options.batch, options.layout.folder) == ("app", False, "db")
    assert context.backup_options(Layout).folder == "t"


@pytest.mark.parametrize(
    ("section", "complaint"),
    [
        ({"shema_name": "app"}, "database.sqlopts.shema_name: unknown setting (did you mean schema_name?)"),
        ({"layout": {"foldr": "db"}}, "database.sqlopts.layout.foldr: unknown setting (did you mean folder?)"),
        ({"batch": "yes"}, "database.sqlopts.batch: Input should be a valid boolean"),
        ({"schema_name": ""}, "database.sqlopts.schema_name: String should have at least 1 character"),
    ],
)
def test_a_bad_tool_section_is_refused_before_the_run(configure, section, complaint):
    assert complaint in refused(*configure(section))


def test_a_bad_backup_key_is_refused_in_every_environment_using_an_installed_provider(configure):
    misspelt = refused(*configure(backup={"provider": "tape", "foldr": "t"}))
    provider_without_options = refused(*configure(staging_backup={"provider": "pg_dump", "compression": 9}))

    assert "database.environments.production.backup.foldr: unknown setting (did you mean folder?)" in misspelt
    assert "database.environments.staging.backup.compression: unknown setting" in provider_without_options


def test_the_config_schema_holds_every_installed_plugins_options(configure, run_faber):
    plugins, _ = configure()

    schema = plugins.config_schema()
    installed = run_faber("config", "schema").json

    definitions = schema["$defs"]
    assert definitions["DatabaseConfig"]["properties"]["sqlopts"] == {"$ref": "#/$defs/SqlOptions"}
    assert set(definitions["SqlOptions"]["properties"]) == {"schema_name", "batch", "layout"}
    assert {
        "if": {"properties": {"provider": {"const": "tape"}}},
        "then": {"properties": {"folder": {"default": "migrations", "title": "Folder", "type": "string"}}},
    } in definitions["BackupSettings"]["allOf"]
    installed_tools = installed["$defs"]["DatabaseConfig"]["properties"]
    assert installed_tools["prisma"] == {"$ref": "#/$defs/PrismaOptions"}
    assert "migrations_dir" in installed["$defs"]["PrismaOptions"]["properties"]
    rds = next(
        rule for rule in installed["$defs"]["BackupSettings"]["allOf"] if "rds-snapshot" in json.dumps(rule["if"])
    )
    assert "db_instance_identifier" in rds["then"]["properties"]
