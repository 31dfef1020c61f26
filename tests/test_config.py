from __future__ import annotations

import pytest
from pydantic import ValidationError

from faber_core.config import FaberConfig
from faber_core.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "mode", "protected"),
    [
        ("dev", "dev", False),
        ("test", "dev", False),
        ("staging", "deploy", True),
        ("production", "deploy", True),
        ("qa", "deploy", True),
    ],
)
def test_environment_defaults_follow_the_name(name, mode, protected):
    config = FaberConfig.model_validate(
        {"database": {"migration_tool": "prisma", "environments": {name: {"database_url_env": "X"}}}}
    )

    settings = config.environment(name)

    assert settings.mode == mode and settings.protected is protected
    assert settings.backup_before_migrate is protected
    assert settings.require_approval is protected and settings.auto_rollback is protected


def test_explicit_settings_win_over_defaults():
    config = FaberConfig.model_validate(
        {
            "database": {
                "migration_tool": "prisma",
                "environments": {"production": {"database_url_env": "X", "require_approval": False}},
            }
        }
    )

    settings = config.environment("production")

    assert settings.require_approval is False and settings.backup_before_migrate is True


def test_dev_exists_without_configuration_and_others_do_not():
    config = FaberConfig.model_validate({"database": {"migration_tool": "prisma"}})

    assert config.environment("dev").database_url_env is None
    with pytest.raises(ConfigError, match="Unknown environment: production") as raised:
        config.environment("production")
    assert "Configured environments: dev" in raised.value.suggestions[0]


def test_an_unknown_environment_suggests_the_close_one_or_lists_them_all():
    config = FaberConfig.model_validate(
        {"database": {"migration_tool": "prisma", "environments": {"production": {}, "staging": {}}}}
    )

    with pytest.raises(ConfigError) as abbreviated:
        config.environment("prod")
    with pytest.raises(ConfigError) as unlike:
        config.environment("qa")

    assert abbreviated.value.message == "Unknown environment: prod (did you mean production?)"
    assert unlike.value.message == "Unknown environment: qa"
    assert unlike.value.suggestions[0] == "Configured environments: dev, production, staging"


def test_requires_success_in_must_name_a_configured_environment():
    """A typo there would pass the config check, faber status and --dry-run, and stop only the deploy."""
    environments = {"production": {"requires_success_in": "stagign"}, "staging": {}}

    with pytest.raises(ValidationError) as refused:
        FaberConfig.model_validate({"database": {"migration_tool": "prisma", "environments": environments}})

    assert "environments.production.requires_success_in names an unknown environment: 'stagign'" in str(refused.value)
    assert "(did you mean staging?)" in str(refused.value)


@pytest.mark.parametrize("name", ["../etc", "staging\n"])
def test_environment_names_are_validated(name):
    # A name ending in a line break landed in backup folder names and in unquoted commands faber suggests.
    with pytest.raises(ConfigError, match="Invalid environment name"):
        FaberConfig.model_validate({"database": {"migration_tool": "prisma"}}).environment(name)


def test_a_config_naming_an_environment_or_a_variable_with_a_line_break_is_refused():
    for environments in ({"staging\n": {}}, {"staging": {"database_url_env": "STAGING_DATABASE_URL\n"}}):
        with pytest.raises(ValidationError):
            FaberConfig.model_validate({"database": {"migration_tool": "prisma", "environments": environments}})


def test_tool_sections_reach_the_handler():
    config = FaberConfig.model_validate(
        {"database": {"migration_tool": "prisma", "prisma": {"migrations_dir": "db/migrations"}}}
    )

    assert config.database.tool_options("prisma") == {"migrations_dir": "db/migrations"}
    assert config.database.tool_options("typeorm") == {}


def test_the_tool_is_named_or_is_the_one_tool_section():
    def tool(database: dict) -> str:
        return FaberConfig.model_validate({"database": database}).database.migration_tool

    assert tool({"migration_tool": "sequelize"}) == "sequelize"
    assert tool({"typeorm": {"data_source": "src/data-source.js"}}) == "typeorm"
    with pytest.raises(ValidationError, match="migration_tool is required"):
        tool({"environments": {}})
    with pytest.raises(ValidationError, match="the sections prisma, typeorm do not say which"):
        tool({"typeorm": {}, "prisma": {}})
