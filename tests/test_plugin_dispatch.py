"""Per-step hooks go to the plugin that declared the tool or provider name, and to no other."""

from __future__ import annotations

import os

import pytest

from faber_core import hookimpl
from faber_core.config import config_file
from faber_core.errors import PluginError
from faber_core.models import BackupProviderInfo, MigrationPreview, MigrationState, ToolInfo
from faber_core.testing import sqlfiles

USERS = "CREATE TABLE users (id bigint PRIMARY KEY);"
POSTS = "CREATE TABLE posts (id bigint PRIMARY KEY);"


def use_tool(project_dir, tool: str) -> None:
    path = config_file(project_dir)
    path.write_text(path.read_text().replace(f'"{sqlfiles.TOOL}"', f'"{tool}"'))


class Impostor:
    """Declares names of its own, and answers every per-step hook first, for any name, with nothing."""

    @hookimpl
    def faber_migration_tools(self):
        return [ToolInfo(name="impostor")]

    @hookimpl
    def faber_backup_providers(self):
        return [BackupProviderInfo(name="impostor-backup")]

    @hookimpl(tryfirst=True)
    def faber_migration_status(self, context):
        return MigrationState(tool="impostor", local=[], records=[])

    @hookimpl(tryfirst=True)
    def faber_migration_preview(self, context, pending):
        return []

    @hookimpl(tryfirst=True)
    def faber_backup_list(self, context):
        return []


def test_a_plugin_answering_first_for_every_name_cannot_take_over_another_plugins_name(plugins, project, context_for):
    context = context_for(project({"001_users": USERS, "002_posts": POSTS}))
    state = plugins.migration_status(context)
    plugins.migration_apply(context, state.pending_migrations()[:1])
    backup = plugins.backup_create(context, "before", [])

    plugins.pm.register(Impostor(), name="impostor")
    state = plugins.migration_status(context)

    assert state.tool == sqlfiles.TOOL and state.pending == ["002_posts"]
    assert [p.name for p in plugins.migration_preview(context, state.pending_migrations())] == ["002_posts"]
    assert [b.id for b in plugins.backup_list(context)] == [backup.id]


class PreviewsTheWrongMigrations:
    @hookimpl
    def faber_migration_tools(self):
        return [ToolInfo(name="sloppy")]

    @hookimpl
    def faber_migration_status(self, context):
        return sqlfiles.faber_migration_status(context).model_copy(update={"tool": "sloppy"})

    @hookimpl
    def faber_migration_preview(self, context, pending):
        return [MigrationPreview(name=m.name, sql="", estimated_duration_seconds=0) for m in reversed(pending)]


def test_previews_that_do_not_match_the_pending_list_are_a_plugin_error(plugins, project, context_for):
    project_dir = project({"001_users": USERS, "002_posts": POSTS})
    plugins.pm.unregister(name="sqlfiles")
    plugins.pm.register(PreviewsTheWrongMigrations(), name="sloppy")
    use_tool(project_dir, "sloppy")
    context = context_for(project_dir)
    pending = plugins.migration_status(context).pending_migrations()

    with pytest.raises(PluginError) as raised:
        plugins.migration_preview(context, pending)

    assert "described ['002_posts', '001_users'] for the pending migrations ['001_users', '002_posts']" in (
        raised.value.message
    )
    with pytest.raises(PluginError) as raised:
        plugins.migration_apply(context, pending)
    assert raised.value.message == (
        "sloppy declares the migration tool 'sloppy' but does not implement faber_migration_apply"
    )


class TwoTools:
    """One plugin, two tool names: the hooks that take ``tool`` learn which one was configured."""

    seen: list[str] = []

    @hookimpl
    def faber_migration_tools(self):
        return [ToolInfo(name="first"), ToolInfo(name="second")]

    @hookimpl
    def faber_migration_status(self, tool, context):
        self.seen.append(tool)
        return MigrationState(tool=tool, local=[], records=[])


def test_a_plugin_declaring_several_tools_is_told_which_one(plugins, project, context_for):
    project_dir = project({})
    plugins.pm.register(TwoTools(), name="two-tools")
    use_tool(project_dir, "second")

    assert plugins.migration_status(context_for(project_dir)).tool == "second"
    assert TwoTools.seen == ["second"]


class LateTool:
    @hookimpl
    def faber_migration_tools(self):
        return [ToolInfo(name="late")]

    @hookimpl
    def faber_migration_status(self, context):
        return MigrationState(tool="late", local=[], records=[])


def test_a_plugin_registered_after_a_dispatch_is_found_and_one_unregistered_is_gone(plugins, project, context_for):
    project_dir = project({})
    assert plugins.migration_status(context_for(project_dir)).tool == sqlfiles.TOOL

    plugins.pm.register(LateTool(), name="late")
    use_tool(project_dir, "late")
    assert plugins.migration_status(context_for(project_dir)).tool == "late"

    plugins.pm.unregister(name="late")
    assert "late" not in plugins.tools()


class Prepares:
    """sqlfiles with a prepare hook recording, in order, the calls of a deploy."""

    calls: list[str] = []

    @hookimpl
    def faber_migration_tools(self):
        return [ToolInfo(name="preparing")]

    @hookimpl
    def faber_migration_prepare(self, context):
        self.calls.append("prepare")

    @hookimpl
    def faber_migration_status(self, context):
        self.calls.append("status")
        return sqlfiles.faber_migration_status(context).model_copy(update={"tool": "preparing"})

    @hookimpl
    def faber_migration_preview(self, context, pending):
        return sqlfiles.faber_migration_preview(context, pending)

    @hookimpl
    def faber_migration_apply(self, context, pending):
        return sqlfiles.faber_migration_apply(context, pending)


class PreparesForAnyTool:
    calls: list[str] = []

    @hookimpl(tryfirst=True)
    def faber_migration_prepare(self, context):
        self.calls.append("prepare")


def test_a_deploy_asks_its_tools_plugin_alone_to_prepare_before_the_first_status_read(plugins, project, context_for):
    from faber_core.workflow import DeployOptions, migrate

    project_dir = project({"001_users": USERS})
    plugins.pm.register(Prepares(), name="preparing")
    plugins.pm.register(PreparesForAnyTool(), name="any-tool")
    use_tool(project_dir, "preparing")

    migrate(context_for(project_dir), plugins, DeployOptions(assume_yes=True, skip_backup=True))

    assert Prepares.calls[:2] == ["prepare", "status"] and Prepares.calls.count("prepare") == 1
    assert PreparesForAnyTool.calls == []


HALF_A_PROVIDER = """
from faber_core import hookimpl
from faber_core.models import BackupProviderInfo

@hookimpl
def faber_backup_providers():
    return [BackupProviderInfo(name="half")]

@hookimpl
def faber_backup_create(context, reason, migrations):
    raise NotImplementedError
"""


def test_faber_plugins_lists_each_plugins_hooks_and_flags_a_missing_required_one(tmp_path, run_faber):
    (tmp_path / "half_provider.py").write_text(HALF_A_PROVIDER)
    env = {
        "FABER_PLUGINS": "half_provider",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }

    listed = run_faber("plugins", "--json", env=env, cwd=tmp_path)
    shown = run_faber("plugins", env=env, cwd=tmp_path)

    assert listed.returncode == 0, listed.output
    result = listed.json["result"]
    assert {
        "name": "half_provider",
        "package": "half_provider",
        "hooks": ["faber_backup_create", "faber_backup_providers"],
    } in (result["plugins"])
    assert result["missing_hooks"] == [
        {
            "package": "half_provider",
            "kind": "backup provider",
            "name": "half",
            "missing": ["faber_backup_list", "faber_backup_restore"],
        }
    ]
    assert (
        "✗ half_provider: the backup provider half lacks faber_backup_list, faber_backup_restore (required)"
        in shown.stdout.splitlines()
    )


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        ("faber_core.testing.sqlfiles,faber_no_such_plugin", "'faber_no_such_plugin', which is not installed"),
        ("faber_no_such_package.plugin", "(no module named 'faber_no_such_package' on the Python path)"),
        ("../plugins/mytool.py", "'../plugins/mytool.py', which is not a module name"),
    ],
    ids=["typo", "package-missing", "a-path"],
)
def test_a_faber_plugins_module_that_cannot_be_imported_is_a_config_error(monkeypatch, modules, expected):
    """It was an unexpected error (exit 1, "report this as a bug") for a mistyped name."""
    from faber_core.errors import ConfigError
    from faber_core.plugins import build_plugin_manager

    monkeypatch.setenv("FABER_PLUGINS", modules)

    with pytest.raises(ConfigError) as refused:
        build_plugin_manager(load_entrypoints=True)

    assert refused.value.message.startswith("FABER_PLUGINS names ") and expected in refused.value.message


def test_a_module_named_twice_in_faber_plugins_is_loaded_once(monkeypatch):
    from faber_core.plugins import build_plugin_manager

    monkeypatch.setenv("FABER_PLUGINS", "faber_core.testing.sqlfiles, faber_core.testing.sqlfiles")

    assert build_plugin_manager().has_plugin("faber_core.testing.sqlfiles")
