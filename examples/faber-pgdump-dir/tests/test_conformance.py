"""faber-pgdump-dir against faber's contract kit: the checks every backup provider passes."""

from __future__ import annotations

import pytest
from faber_pgdump_dir import plugin

from faber_core.context import RunContext
from faber_core.plugins import Plugins
from faber_core.testing import sqlfiles
from faber_core.testing.conformance import BackupProviderContract


class TestPgDumpDirContract(BackupProviderContract):
    @pytest.fixture
    def contract_plugins(self, plugin_manager) -> Plugins:
        plugin_manager.register(sqlfiles, name="sqlfiles")
        plugin_manager.register(plugin, name="pgdump_dir")
        return Plugins(plugin_manager)

    @pytest.fixture
    def contract_context(self, pgdump_dir_project, run_context, monkeypatch):
        def make(events: list) -> RunContext:
            project, env = pgdump_dir_project({})
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            return run_context(project, events, operation="rollback")

        return make
