"""faber-plainsql against faber's contract kit: the checks every handler passes."""

from __future__ import annotations

import pytest
from faber_plainsql import plugin

from faber_core.context import RunContext
from faber_core.plugins import Plugins
from faber_core.testing.conformance import ContractMigration, HandlerContract


class TestPlainSqlContract(HandlerContract):
    @pytest.fixture
    def contract_plugins(self, plugin_manager) -> Plugins:
        plugin_manager.register(plugin, name="plainsql")
        return Plugins(plugin_manager)

    @pytest.fixture
    def contract_context(self, plainsql_project, run_context, monkeypatch):
        def make(migrations: list[ContractMigration], events: list, **settings) -> RunContext:
            files = {f"V{i}__{m.slug}.sql": m.script for i, m in enumerate(migrations, start=1)}
            project, env = plainsql_project(files, **settings)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            return run_context(project, events)

        return make
