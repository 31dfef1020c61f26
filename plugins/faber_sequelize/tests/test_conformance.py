"""The Sequelize handler against faber's contract kit."""

from __future__ import annotations

import pytest
from faber_core.context import RunContext
from faber_core.plugins import Plugins
from faber_core.testing.conformance import ContractMigration, HandlerContract

from faber_sequelize import plugin


class TestSequelizeContract(HandlerContract):
    transactional_migrations = False  # sequelize-cli runs a migration without a transaction
    failed_migrations_recorded = False  # SequelizeMeta holds a migration only once it has run

    @pytest.fixture
    def contract_plugins(self, plugin_manager) -> Plugins:
        plugin_manager.register(plugin.handler, name="faber_sequelize")
        return Plugins(plugin_manager)

    @pytest.fixture
    def contract_context(self, sequelize_project, sequelize_context, sequelize_migration):
        def make(migrations: list[ContractMigration], events: list, **settings) -> RunContext:
            sources = {
                f"2025010100{i:04}-{m.slug.replace('_', '-')}.js": sequelize_migration(*m.statements)
                for i, m in enumerate(migrations, start=1)
            }
            return sequelize_context(sequelize_project(sources, fixture_migrations=False, **settings), events)

        return make
