"""The Prisma handler against faber's contract kit."""

from __future__ import annotations

import pytest
from faber_core.context import RunContext
from faber_core.plugins import Plugins
from faber_core.testing.conformance import ContractMigration, HandlerContract

from faber_prisma import plugin


class TestPrismaContract(HandlerContract):
    @pytest.fixture
    def contract_plugins(self, plugin_manager) -> Plugins:
        plugin_manager.register(plugin, name="faber_prisma")
        return Plugins(plugin_manager)

    @pytest.fixture
    def contract_context(self, prisma_project, prisma_context):
        def make(migrations: list[ContractMigration], events: list, **settings) -> RunContext:
            folders = {f"2025010100{i:04}_{m.slug}": m.script for i, m in enumerate(migrations, start=1)}
            return prisma_context(prisma_project(folders, **settings), events)

        return make
