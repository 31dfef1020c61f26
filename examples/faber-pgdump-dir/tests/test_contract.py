"""faber-pgdump-dir against faber's contract kit (faber_core.testing.conformance)."""

from __future__ import annotations

import pytest
from faber_core.context import RunContext, open_context
from faber_core.plugins import Plugins
from faber_core.testing import sqlfiles
from faber_core.testing.conformance import BackupProviderContract

from faber_pgdump_dir import PROVIDER, plugin


class TestPgdumpDirContract(BackupProviderContract):
    @pytest.fixture
    def contract_plugins(self, plugin_manager) -> Plugins:
        plugin_manager.register(sqlfiles, name="sqlfiles")
        plugin_manager.register(plugin, name="faber_pgdump_dir")
        return Plugins(plugin_manager)

    @pytest.fixture
    def contract_context(self, faber_project, database_url, monkeypatch):
        monkeypatch.setenv("CONTRACT_URL", database_url)

        def make(events: list) -> RunContext:
            environment = {"database_url_env": "CONTRACT_URL", "backup": {"provider": PROVIDER}}
            project = faber_project(
                {"database": {"migration_tool": sqlfiles.TOOL, "environments": {"production": environment}}}
            )
            return open_context(project, "production", "rollback", listeners=[events.append])

        return make
