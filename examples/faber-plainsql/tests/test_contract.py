"""faber-plainsql against faber's contract kit (faber_core.testing.conformance)."""

from __future__ import annotations

import pytest
from faber_core.context import RunContext, open_context
from faber_core.plugins import Plugins
from faber_core.testing.conformance import ContractMigration, HandlerContract

from faber_plainsql import plugin


class TestPlainsqlContract(HandlerContract):
    @pytest.fixture
    def contract_plugins(self, plugin_manager) -> Plugins:
        plugin_manager.register(plugin, name="faber_plainsql")
        return Plugins(plugin_manager)

    @pytest.fixture
    def contract_context(self, faber_project, database_url, monkeypatch):
        monkeypatch.setenv("CONTRACT_URL", database_url)

        def make(migrations: list[ContractMigration], events: list, **settings) -> RunContext:
            environment = {"database_url_env": "CONTRACT_URL", **settings}
            files = {f"sql/V{i}__{m.slug}.sql": m.script for i, m in enumerate(migrations, start=1)}
            project = faber_project(
                {"database": {"migration_tool": "plainsql", "environments": {"production": environment}}}, files
            )
            return open_context(project, "production", "deploy-migrations", listeners=[events.append])

        return make
