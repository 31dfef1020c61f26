"""The one place that builds faber's PluginManager, and the typed facade the core calls.

Core code never touches ``pm.hook.*`` directly: :class:`Plugins` gives it one method per hook,
checks that the configured tool or provider exists, and validates what plugins return.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from faber_core import hookspecs
from faber_core.config import EnvironmentSettings, FaberConfig, plugin_options
from faber_core.context import RunContext
from faber_core.errors import ConfigError, PluginError
from faber_core.models import (
    ApplyOutcome,
    AuditEvent,
    BackupLeftover,
    BackupProviderInfo,
    BackupPruneOutcome,
    BackupRecord,
    HealthCheckInfo,
    HealthCheckResult,
    LocalMigration,
    MigrationPreview,
    MigrationRefusal,
    MigrationState,
    Resolution,
    RestoreOutcome,
    ToolInfo,
)
from faber_core.suggest import closest, did_you_mean

if TYPE_CHECKING:
    from importlib.metadata import Distribution

BUILTIN_PLUGINS = (
    "faber_core.engines.health",
    "faber_core.backup.pg_dump",
    "faber_core.backup.mysqldump",
    "faber_core.telemetry:SpanBridge",
    "faber_core.audit.history:DeploymentHistory",
    "faber_core.audit.jsonl:AuditLog",
)
"""A module of hook functions, or ``module:Class`` for a plugin that remembers things between the
events of a run: every plugin manager registers an instance of its own, so two managers in one
process (an orchestrator's, a test's) never share a run's state."""
REQUIRED_TOOL_HOOKS = ("faber_migration_status", "faber_migration_preview", "faber_migration_apply")
"""What the plugin declaring a migration tool must implement (see faber_core.hookspecs)."""
REQUIRED_PROVIDER_HOOKS = ("faber_backup_create", "faber_backup_list", "faber_backup_restore")
"""What the plugin declaring a backup provider must implement."""
NO_PLUGINS_ENV = "FABER_NO_PLUGINS"
EXTRA_PLUGINS_ENV = "FABER_PLUGINS"


class PluginManager(pluggy.PluginManager):
    """pluggy's plugin manager, knowing the installed distribution each entry-point plugin came from."""

    def __init__(self) -> None:
        super().__init__("faber")
        self.distributions: list[tuple[object, Distribution]] = []

    def distribution_of(self, plugin: object) -> Distribution | None:
        return next((dist for registered, dist in self.distributions if registered is plugin), None)


def build_plugin_manager(*plugins: object, load_entrypoints: bool = True) -> PluginManager:
    """Specs, the built-in plugins, ``plugins``, then (unless disabled) installed entry points.

    ``FABER_PLUGINS`` (comma-separated module names) loads extra plugin modules, for developing
    a plugin before it is packaged; ``FABER_NO_PLUGINS=1`` loads no installed plugin.
    """
    import importlib

    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for spec in BUILTIN_PLUGINS:
        module_name, _, class_name = spec.partition(":")
        module = importlib.import_module(module_name)
        pm.register(getattr(module, class_name)() if class_name else module, name=module_name)
    # A module named twice is loaded once (pluggy refuses a second registration under its name).
    extra = dict.fromkeys(m.strip() for m in os.environ.get(EXTRA_PLUGINS_ENV, "").split(",") if m.strip())
    for name in extra if load_entrypoints else ():
        pm.register(_extra_plugin(name), name=name)
    for plugin in plugins:
        pm.register(plugin)
    if load_entrypoints and not os.environ.get(NO_PLUGINS_ENV):
        load_installed_plugins(pm)
    pm.check_pending()
    return pm


def _extra_plugin(name: str) -> object:
    """The module ``name`` of ``FABER_PLUGINS``; a :class:`ConfigError` when no such module exists
    (a typo, a path instead of a module name), which was an unexpected error (exit 1)."""
    import importlib

    def refused(reason: str) -> ConfigError:
        return ConfigError(
            f"{EXTRA_PLUGINS_ENV} names {name!r}, {reason}",
            suggestions=[
                f"Give module names separated by commas (e.g. faber_mytool.plugin), or unset {EXTRA_PLUGINS_ENV}"
            ],
        )

    if not _MODULE_NAME.fullmatch(name):
        raise refused("which is not a module name")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name + ".").startswith(exc.name + "."):
            raise  # the module exists; something it imports does not: the plugin's own bug
        raise refused(f"which is not installed (no module named {exc.name!r} on the Python path)") from None


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def load_installed_plugins(pm: PluginManager) -> None:
    """Load the ``faber`` entry points one by one, so one broken plugin cannot take the others down.

    The installed distributions are scanned once for all of them (pluggy's loader scans them again
    for each plugin it is asked to load by name). A plugin that fails to import is skipped with a
    warning on stderr; if the configuration needs what it provides, the run then stops with the
    usual "not installed" error.
    """
    import sys
    from importlib.metadata import entry_points

    for entry_point in entry_points(group="faber"):
        if pm.has_plugin(entry_point.name) or pm.is_blocked(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
            pm.register(plugin, name=entry_point.name)
        except Exception as exc:  # any import-time error of third-party code
            package = entry_point.dist.name if entry_point.dist else entry_point.value
            sys.stderr.write(
                f"warning: faber plugin {entry_point.name!r} ({package}) failed to load and was skipped: "
                f"{type(exc).__name__}: {exc}\n"
            )
            continue
        if entry_point.dist is not None:
            pm.distributions.append((plugin, entry_point.dist))


@functools.cache
def get_plugin_manager() -> PluginManager:
    return build_plugin_manager()


class NoOptions(BaseModel):
    """The options of a tool or provider that declares none: any key is unknown."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # validated through plugin_options' own model


def _owner(pm: PluginManager, plugin: object) -> str:
    """The package (name and version) that registered ``plugin``; reads the package's metadata."""
    dist = pm.distribution_of(plugin)
    if dist is not None:
        return f"{dist.name} {dist.version}"
    return pm.get_name(plugin) or repr(plugin)


@dataclass(frozen=True)
class Declaration:
    """A name a plugin declared (a migration tool, a backup provider, a health check), and who declared it."""

    info: Any
    plugin: object
    package: str


class Plugins:
    """Typed access to the hooks for the workflow.

    A per-step hook (status, preview, apply, backup create ...) is called on the plugin that
    declared the configured tool or provider name, and on no other: through pluggy's
    ``subset_hook_caller``, so the hooks stay per-step hookspecs that ``check_pending()`` checks,
    while another plugin's answer (even ``[]``) can never stand in for the owner's.
    """

    def __init__(self, pm: PluginManager | None = None) -> None:
        self.pm = pm or get_plugin_manager()
        self._declared: dict[str, tuple[frozenset[object], dict[str, Declaration]]] = {}

    def _collect(self, hook_name: str, model: type[Any]) -> dict[str, Declaration]:
        """Names declared through a listing hook, each with the plugin and package that declared it.

        Collected once for the plugins registered, and again only when they change: every hook
        dispatch needs the declarations, and the packages' metadata is read from disk."""
        registered = frozenset(self.pm.get_plugins())
        collected = self._declared.get(hook_name)
        if collected is None or collected[0] != registered:
            collected = self._declared[hook_name] = (registered, self._declarations(hook_name, model))
        return collected[1]

    def _declarations(self, hook_name: str, model: type[Any]) -> dict[str, Declaration]:
        hook = getattr(self.pm.hook, hook_name)
        found: dict[str, Declaration] = {}
        for impl in hook.get_hookimpls():
            for item in impl.function() or []:
                info = model.model_validate(item)
                owner = _owner(self.pm, impl.plugin)
                if info.name in found and found[info.name].package != owner:
                    raise ConfigError(
                        f"Conflicting plugins: {found[info.name].package} and {owner} both provide {info.name!r}",
                        suggestions=["Uninstall one of them, or run with FABER_NO_PLUGINS=1 to debug"],
                    )
                found[info.name] = Declaration(info, impl.plugin, owner)
        return found

    def tools(self) -> dict[str, Declaration]:
        return self._collect("faber_migration_tools", ToolInfo)

    def backup_providers(self) -> dict[str, Declaration]:
        return self._collect("faber_backup_providers", BackupProviderInfo)

    def health_check_names(self) -> dict[str, Declaration]:
        return self._collect("faber_health_check_names", HealthCheckInfo)

    def require_tool(self, tool: str) -> Declaration:
        tools = self.tools()
        if tool not in tools:
            installed = ", ".join(sorted(tools)) or "none"
            meant = closest(tool, tools)
            raise ConfigError(
                f"No installed plugin provides the migration tool {tool!r} (installed: {installed})"
                + (f"; did you mean {meant}?" if meant else ""),
                suggestions=[f'Set "migration_tool": "{meant}" in the database section']
                if meant
                else [
                    f"Install its plugin, e.g. pip install faber-{tool}",
                    "Or set database.migration_tool to one of the installed tools",
                ],
            )
        return tools[tool]

    def require_backup_provider(self, provider: str, engine: str | None = None) -> Declaration:
        """The plugin declaring ``provider``; a :class:`ConfigError` when none does, or when it does
        not back up ``engine`` (the target's engine name)."""
        providers = self.backup_providers()
        if provider not in providers:
            installed = ", ".join(sorted(providers)) or "none"
            raise ConfigError(
                f"No installed plugin provides the backup provider {provider!r} (installed: {installed})"
                + did_you_mean(provider, providers),
                suggestions=[f"Install its plugin, or set backup.provider to one of: {installed}"],
            )
        declared = providers[provider]
        engines = declared.info.engines
        if engine is not None and engines is not None and engine not in engines:
            fitting = sorted(name for name, d in providers.items() if engine in (d.info.engines or [engine]))
            raise ConfigError(
                f"The backup provider {provider!r} backs up {', '.join(engines)} databases, not {engine}",
                suggestions=[f"Set backup.provider to one that does: {', '.join(fitting) or 'none installed'}"],
            )
        return declared

    def check_config(self, context: RunContext) -> None:
        """Refuse, before anything runs, a config naming what no installed plugin provides (the
        migration tool, a tool section, the environment's backup provider, a health check) and
        plugin options their plugin's options model does not accept: every tool section, and the
        backup keys of every environment whose provider is installed; and the command's fleet
        backed up by a provider no fleet can use (:meth:`require_fleet_backup`)."""
        self.require_tool(context.tool)
        tools = self.tools()
        for section, raw in context.config.database.tool_sections().items():
            if section not in tools:
                installed = ", ".join(sorted(tools)) or "none"
                raise ConfigError(
                    f"config: database.{section} is not a setting nor the options of an installed migration tool "
                    f"(installed: {installed}){did_you_mean(section, tools)}",
                    suggestions=["Remove the section, or install the plugin of that tool"],
                )
            plugin_options(tools[section].info.options or NoOptions, raw, f"database.{section}")
        self.require_backup_provider(context.settings.backup.provider, context.database.engine.name)
        providers = self.backup_providers()
        for environment, settings in context.config.database.environments.items():
            declared = providers.get(settings.backup.provider)
            if declared is not None:
                where = f"database.environments.{environment}.backup"
                plugin_options(declared.info.options or NoOptions, settings.backup.provider_options(), where)
        # The command's own fleet only (a target runs as FLEET/TARGET): another environment's
        # provider is no reason to stop this one.
        fleet = context.environment.partition("/")[0]
        self.require_fleet_backup(fleet, context.config.environment(fleet))
        checks = self.health_check_names()
        for name in context.settings.health_checks:
            if name not in checks:
                raise ConfigError(
                    f"config: database.environments.{context.environment}.health_checks names {name!r}, which no "
                    f"installed plugin runs{did_you_mean(name, checks)}",
                    suggestions=[f"Health checks installed: {', '.join(sorted(checks)) or 'none'}"],
                )

    def require_fleet_backup(self, environment: str, settings: EnvironmentSettings) -> None:
        """Refuse a fleet backed up by a provider whose backup is a whole instance: each target's
        automatic rollback would replace every other target's database with it (and the one
        instance the settings name is not each target's)."""
        declared = self.backup_providers().get(settings.backup.provider)
        if settings.targets is None or declared is None or not declared.info.whole_instance:
            return
        raise ConfigError(
            f"config: database.environments.{environment}.backup: the backup provider {settings.backup.provider!r} "
            f"backs up and restores a whole instance, not one database, and {environment} is a fleet of "
            "databases: a target's rollback would replace every other target's database too",
            suggestions=[
                "Back the fleet up per database: backup.provider pg_dump (PostgreSQL) or mysqldump (MySQL/MariaDB)",
                "Or deploy the instance as an environment of its own (database_url_env) backed up by snapshots",
            ],
        )

    def config_schema(self) -> dict[str, Any]:
        """The JSON Schema of the config file with every installed plugin's options: each tool's
        under ``database.<tool>``, each provider's in the ``backup`` section when it is the provider."""
        tools = {name: d.info.options for name, d in self.tools().items() if d.info.options}
        providers = {name: d.info.options for name, d in self.backup_providers().items() if d.info.options}
        models = [FaberConfig, *tools.values(), *providers.values()]
        refs, schema = models_json_schema([(model, "validation") for model in models])
        definitions = schema["$defs"]
        root = definitions.pop(FaberConfig.__name__)
        for name, model in tools.items():
            definitions["DatabaseConfig"]["properties"][name] = refs[(model, "validation")]
        rules = []
        for name, model in providers.items():
            # Beside faber's own backup keys, so its properties rather than the model (which refuses others).
            options = definitions.pop(refs[(model, "validation")]["$ref"].rsplit("/", 1)[-1])
            then = {
                "properties": options["properties"],
                **({"required": options["required"]} if "required" in options else {}),
            }
            rules.append({"if": {"properties": {"provider": {"const": name}}}, "then": then})
        definitions["BackupSettings"]["allOf"] = rules
        return {**root, "$defs": definitions}

    def migration_prepare(self, context: RunContext) -> bool:
        """Let the handler start what its status read needs (optional: a handler without the hook).
        Whether it has the hook, i.e. whether its work now goes on in the background."""
        owner = self.require_tool(context.tool)
        if not self._implements(owner, "faber_migration_prepare"):
            return False
        self._call_owner("faber_migration_prepare", owner, tool=context.tool, context=context)
        return True

    def migration_status(self, context: RunContext) -> MigrationState:
        from faber_core.audit import unfinished

        answer = self._ask_handler("faber_migration_status", context)
        state = MigrationState.model_validate(answer)
        _refuse_names_not_utf8(state)
        return unfinished.with_killed_runs(context, state)

    def migration_validate(self, context: RunContext, pending: list[LocalMigration]) -> list[MigrationRefusal]:
        """The handler's refusals of pending migrations; none from a handler without the optional hook."""
        owner = self.require_tool(context.tool)
        hook = "faber_migration_validate"
        answer = self._call_owner(hook, owner, tool=context.tool, context=context, pending=pending)
        return [MigrationRefusal.model_validate(item) for item in answer or []]

    def migration_preview(self, context: RunContext, pending: list[LocalMigration]) -> list[MigrationPreview]:
        answer = self._ask_handler("faber_migration_preview", context, pending=pending)
        previews = [MigrationPreview.model_validate(item) for item in answer]
        described, expected = [p.name for p in previews], [m.name for m in pending]
        if described != expected:
            package = self.require_tool(context.tool).package
            raise PluginError(
                f"{package}: faber_migration_preview described {described or 'nothing'} for the pending "
                f"migrations {expected}; a preview must describe each pending migration once, in order",
                suggestions=["Report this to the plugin's authors; `faber migrate` without --dry-run is not affected"],
            )
        return previews

    def migration_apply(self, context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
        answer = self._ask_handler("faber_migration_apply", context, pending=pending)
        return ApplyOutcome.model_validate(answer)

    def migration_resolve(self, context: RunContext, name: str, resolution: Resolution) -> MigrationState:
        owner = self.require_tool(context.tool)
        if not self._implements(owner, "faber_migration_resolve"):
            # Optional: a tool whose history has no failed state (Sequelize, TypeORM) has nothing to
            # mark; saying so is not the plugin's bug to report.
            flag = "--applied" if resolution == "applied" else "--rolled-back"
            raise ConfigError(
                f"{context.tool} cannot mark migration {name} {resolution.replace('_', ' ')}: its plugin "
                f"({owner.package}) keeps no failed migrations to resolve; nothing was changed",
                suggestions=[
                    f"faber status {context.environment} names what is failed and why",
                    f"faber resolve {flag} applies to migrations {context.tool} or faber's record of a killed "
                    "deploy reports as failed",
                ],
            )
        answer = self._ask_handler("faber_migration_resolve", context, name=name, resolution=resolution)
        return MigrationState.model_validate(answer)

    def migration_dev(self, context: RunContext) -> ApplyOutcome | None:
        """The tool's own development command, or None when its plugin has none or declines."""
        owner = self.require_tool(context.tool)
        answer = self._call_owner("faber_migration_dev", owner, tool=context.tool, context=context)
        return None if answer is None else ApplyOutcome.model_validate(answer)

    def backup_create(self, context: RunContext, reason: str, migrations: list[tuple[str, str | None]]) -> BackupRecord:
        answer = self._ask_provider("faber_backup_create", context, reason=reason, migrations=migrations)
        return BackupRecord.model_validate(answer)

    def backup_list(self, context: RunContext) -> list[BackupRecord]:
        answer = self._ask_provider("faber_backup_list", context)
        return [BackupRecord.model_validate(item) for item in answer]

    def backup_prune(self, context: RunContext, keep_last: int | None, dry_run: bool) -> BackupPruneOutcome:
        provider = context.settings.backup.provider
        owner = self.require_backup_provider(provider)
        if not self._implements(owner, "faber_backup_prune"):
            raise ConfigError(
                f"The backup provider {provider!r} does not support pruning",
                suggestions=[
                    "Delete old backups with the provider's own tools",
                    f"List them with: faber backups {context.environment}",
                ],
            )
        answer = self._ask_provider("faber_backup_prune", context, keep_last=keep_last, dry_run=dry_run)
        return BackupPruneOutcome.model_validate(answer)

    def backup_leftovers(self, context: RunContext) -> list[BackupLeftover]:
        """The provider's ``faber_backup_leftovers``; none from a provider that does not implement it."""
        owner = self.require_backup_provider(context.settings.backup.provider)
        if not self._implements(owner, "faber_backup_leftovers"):
            return []
        answer = self._ask_provider("faber_backup_leftovers", context)
        return [BackupLeftover.model_validate(item) for item in answer]

    def backup_restore(self, context: RunContext, backup: BackupRecord) -> RestoreOutcome:
        answer = self._ask_provider("faber_backup_restore", context, backup=backup)
        return RestoreOutcome.model_validate(answer)

    def health_checks(self, context: RunContext, checks: list[str]) -> list[HealthCheckResult]:
        results = self.pm.hook.faber_health_checks(context=context, checks=checks)
        return [HealthCheckResult.model_validate(item) for batch in results for item in batch or []]

    def audit_listener(self, context: RunContext) -> Callable[[AuditEvent], None]:
        """A context listener that hands every event to each ``faber_audit_event`` implementation.

        Implementations are called one at a time, in pluggy's order: one that raises is reported
        once per run as a warning on stderr, and the deploy and the other sinks (the built-in
        audit log, the history table, the spans) carry on. An interrupt (Ctrl-C, SIGTERM) is not
        an error of the sink and still propagates.
        """
        implementations = list(reversed(self.pm.hook.faber_audit_event.get_hookimpls()))
        failed: set[str] = set()

        def deliver(event: AuditEvent) -> None:
            arguments = {"event": event, "context": context}
            for impl in implementations:
                try:
                    # As pluggy calls it: an implementation may take a subset of the arguments.
                    impl.function(*[arguments[name] for name in impl.argnames])
                except Exception as exc:  # third-party code: a broken sink must not stop a deploy
                    name = impl.plugin_name
                    if name not in failed:
                        failed.add(name)
                        _warn_sink_failed(context, _owner(self.pm, impl.plugin), event, exc)

        return deliver

    def migration_project_files(self, tool: str, project_dir: Path) -> list[str] | None:
        """The project's files that configure ``tool``, as its plugin finds them; None when no
        installed plugin declares the tool, or its plugin cannot tell (``faber init``)."""
        owner = self.tools().get(tool)
        if owner is None:
            return None
        answer = self._call_owner("faber_migration_project_files", owner, tool=tool, project_dir=project_dir)
        return None if answer is None else [str(name) for name in answer]

    def _ask_handler(self, hook_name: str, context: RunContext, /, **kwargs: Any) -> Any:
        owner = self.require_tool(context.tool)
        return self._require_answer(hook_name, "migration tool", context.tool, owner, context=context, **kwargs)

    def _ask_provider(self, hook_name: str, context: RunContext, /, **kwargs: Any) -> Any:
        provider = context.settings.backup.provider
        owner = self.require_backup_provider(provider)
        return self._require_answer(hook_name, "backup provider", provider, owner, context=context, **kwargs)

    def _require_answer(self, hook_name: str, kind: str, name: str, owner: Declaration, /, **kwargs: Any) -> Any:
        key = "tool" if kind == "migration tool" else "provider"
        answer = self._call_owner(hook_name, owner, **{key: name}, **kwargs)
        if answer is None:
            missing = "does not implement" if not self._implements(owner, hook_name) else "returned nothing from"
            raise PluginError(
                f"{owner.package} declares the {kind} {name!r} but {missing} {hook_name}",
                suggestions=["Run `faber plugins` to see each plugin's hooks", "Report this to the plugin's authors"],
            )
        return answer

    def _call_owner(self, hook_name: str, owner: Declaration, /, **kwargs: Any) -> Any:
        """``hook_name`` called on the declaring plugin alone (its wrappers included)."""
        others = [plugin for plugin in self.pm.get_plugins() if plugin is not owner.plugin]
        return self.pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)

    def _implements(self, owner: Declaration, hook_name: str) -> bool:
        return any(impl.plugin is owner.plugin for impl in getattr(self.pm.hook, hook_name).get_hookimpls())

    def describe(self) -> list[dict[str, Any]]:
        """Every registered plugin with its package, version and the hooks it implements."""
        rows = []
        for plugin in self.pm.get_plugins():
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            rows.append({"name": self.pm.get_name(plugin), "package": _owner(self.pm, plugin), "hooks": hooks})
        return sorted(rows, key=lambda row: row["name"] or "")

    def missing_hooks(self) -> list[dict[str, Any]]:
        """Each declared tool or provider whose plugin lacks a hook a run of it needs."""
        found = []
        for kind, declared, required in (
            ("migration tool", self.tools(), REQUIRED_TOOL_HOOKS),
            ("backup provider", self.backup_providers(), REQUIRED_PROVIDER_HOOKS),
        ):
            for name, declaration in sorted(declared.items()):
                missing = [hook for hook in required if not self._implements(declaration, hook)]
                if missing:
                    found.append({"package": declaration.package, "kind": kind, "name": name, "missing": missing})
        return found


def _refuse_names_not_utf8(state: MigrationState) -> None:
    """Refuse a migration whose file or folder name is not UTF-8 (Python reads its bad bytes as
    lone surrogates), before anything runs: the database and the deployment history could not
    record its name, so a deploy would fail after its backup, its run unrecorded."""

    def shown(text: str) -> str:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

    for migration in state.local:
        try:
            migration.name.encode("utf-8")
        except UnicodeEncodeError:
            if _utf8_read_as_another_encoding(migration.name):
                raise ConfigError(
                    f"The migration {shown(migration.name)} has a UTF-8 name, but this Python reads file names "
                    f"as {sys.getfilesystemencoding()} (the C or POSIX locale with PYTHONUTF8=0): refused",
                    suggestions=["Run faber with PYTHONUTF8=1, or in a UTF-8 locale (LC_ALL=C.UTF-8)"],
                ) from None
            raise ConfigError(
                f"The migration {shown(migration.name)} has a name that is not UTF-8 text: refused",
                suggestions=[f"Rename {shown(migration.path or migration.name)} to a UTF-8 name"],
            ) from None


def _utf8_read_as_another_encoding(name: str) -> bool:
    """Whether ``name``'s bytes are UTF-8 that the file system encoding could not read (in the C
    locale with UTF-8 mode off Python reads file names as ASCII, ``café`` with two bad bytes)."""
    if sys.getfilesystemencoding().lower().replace("-", "") == "utf8":
        return False
    try:
        os.fsencode(name).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _warn_sink_failed(context: RunContext, owner: str, event: AuditEvent, exc: Exception) -> None:
    reason = context.redactor.redact(f"{type(exc).__name__}: {exc}".strip())
    sys.stderr.write(
        f"warning: audit plugin {owner} failed on the {event.kind} event: {reason} "
        "(the deploy and the other audit sinks go on; its further failures in this run are not repeated)\n"
    )
