"""The TypeORM handler against faber's contract kit."""

from __future__ import annotations

import pytest
from faber_core.context import RunContext
from faber_core.plugins import Plugins
from faber_core.testing.conformance import ContractMigration, HandlerContract

from faber_typeorm import plugin


class TestTypeormContract(HandlerContract):
    failed_migrations_recorded = False  # TypeORM's table holds a migration only once it has run

    @pytest.fixture
    def contract_plugins(self, plugin_manager) -> Plugins:
        plugin_manager.register(plugin.handler, name="faber_typeorm")
        return Plugins(plugin_manager)

    @pytest.fixture
    def contract_context(self, typeorm_project, typeorm_context, typeorm_migration):
        def make(migrations: list[ContractMigration], events: list, **settings) -> RunContext:
            sources = {
                f"{1700000000000 + i}-Contract{i}.js": typeorm_migration(
                    f"Contract{i}{1700000000000 + i}", *m.statements, transaction=None if m.transactional else False
                )
                for i, m in enumerate(migrations, start=1)
            }
            return typeorm_context(typeorm_project(sources, fixture_migrations=False, **settings), events)

        return make
