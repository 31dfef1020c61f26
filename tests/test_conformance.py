"""faber's own plugins against the contract kit: the sqlfiles handler and the pg_dump provider."""

from __future__ import annotations

import pytest

from faber_core import hookimpl
from faber_core.context import RunContext, open_context
from faber_core.models import ToolInfo
from faber_core.plugins import Plugins
from faber_core.testing import sqlfiles
from faber_core.testing.conformance import BackupProviderContract, ContractMigration, HandlerContract


def sqlfiles_contexts(faber_project, database_url, monkeypatch, tool: str = sqlfiles.TOOL):
    monkeypatch.setenv("CONTRACT_URL", database_url)

    def make(migrations: list[ContractMigration], events: list, **settings) -> RunContext:
        environment = {"database_url_env": "CONTRACT_URL", **settings}
        files = {f"migrations/{i:03}_{m.slug}.sql": m.script for i, m in enumerate(migrations, start=1)}
        project = faber_project(
            {"database": {"migration_tool": tool, "environments": {"production": environment}}}, files
        )
        return open_context(project, "production", "deploy-migrations", listeners=[events.append])

    return make


class TestSqlfilesContract(HandlerContract):
    non_transactional_migrations = False  # each file runs in one transaction with its row

    @pytest.fixture
    def contract_plugins(self, plugin_manager) -> Plugins:
        plugin_manager.register(sqlfiles, name="sqlfiles")
        return Plugins(plugin_manager)

    @pytest.fixture
    def contract_context(self, faber_project, database_url, monkeypatch):
        return sqlfiles_contexts(faber_project, database_url, monkeypatch)


class StatusThatWrites:
    """sqlfiles under another name, whose status creates its bookkeeping table: a contract breach."""

    @hookimpl
    def faber_migration_tools(self):
        return [ToolInfo(name="eager")]

    @hookimpl
    def faber_migration_status(self, context):
        with context.database.connect() as conn:
            conn.execute(sqlfiles.BOOKKEEPING)
        return sqlfiles.faber_migration_status(context).model_copy(update={"tool": "eager"})


def test_the_contract_catches_a_status_that_writes(plugin_manager, faber_project, database_url, monkeypatch):
    plugin_manager.register(StatusThatWrites(), name="eager")
    contexts = sqlfiles_contexts(faber_project, database_url, monkeypatch, tool="eager")

    with pytest.raises(AssertionError, match="status changed an empty database"):
        HandlerContract().test_status_and_preview_never_write(Plugins(plugin_manager), contexts, database_url)


def pg_dump_contexts(faber_project, database_url, monkeypatch, backup: dict):
    monkeypatch.setenv("CONTRACT_URL", database_url)

    def make(events: list) -> RunContext:
        environment = {"database_url_env": "CONTRACT_URL", "backup": backup}
        project = faber_project(
            {"database": {"migration_tool": sqlfiles.TOOL, "environments": {"production": environment}}}
        )
        return open_context(project, "production", "rollback", listeners=[events.append])

    return make


class TestPgDumpContract(BackupProviderContract):
    backup_settings = {"provider": "pg_dump"}

    @pytest.fixture
    def contract_plugins(self, plugin_manager) -> Plugins:
        plugin_manager.register(sqlfiles, name="sqlfiles")
        return Plugins(plugin_manager)

    @pytest.fixture
    def contract_context(self, faber_project, database_url, monkeypatch):
        return pg_dump_contexts(faber_project, database_url, monkeypatch, self.backup_settings)


class TestPgDumpSwapContract(TestPgDumpContract):
    backup_settings = {"provider": "pg_dump", "restore_mode": "swap"}


@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_the_contract_catches_a_restore_that_ignores_a_lost_lock(
    plugin_manager, faber_project, database_url, monkeypatch, restore_mode
):
    plugin_manager.register(sqlfiles, name="sqlfiles")
    contexts = pg_dump_contexts(
        faber_project, database_url, monkeypatch, {"provider": "pg_dump", "restore_mode": restore_mode}
    )
    monkeypatch.setattr(RunContext, "restore_committing", lambda self, in_transaction=False: None)

    with pytest.raises(pytest.fail.Exception, match=r"call context\.restore_committing\(\) right before"):
        BackupProviderContract().test_a_restore_whose_lock_is_lost_stops_before_it_commits(
            Plugins(plugin_manager), contexts, database_url
        )
