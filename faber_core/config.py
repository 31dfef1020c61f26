"""The project's configuration: ``.fractary/plugins/faber-db/config.json``.

Example::

    {"database": {
        "migration_tool": "prisma",
        "prisma": {"migrations_dir": "prisma/migrations"},
        "environments": {
            "production": {"database_url_env": "PROD_DATABASE_URL", "protected": true,
                           "backup_before_migrate": true, "require_approval": true,
                           "auto_rollback": true}}}}

Settings left out take the defaults of the environment's name: ``dev`` and ``test`` run in dev
mode with no backup or approval; every other name (``staging``, ``production``, ...) is deploy
mode, protected, backed up first, approval required and rolled back automatically on failure.
"""

from __future__ import annotations

import functools
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from faber_core.errors import ConfigError, echoed
from faber_core.secrets import Redactor, secret_forms
from faber_core.suggest import did_you_mean, known_fields
from faber_core.vocabulary import Mode

CONFIG_PATH = Path(".fractary/plugins/faber-db/config.json")
MAX_CONFIG_BYTES = 16 * 1024**2
"""A config is a few kilobytes; a larger file is refused before it is read into memory."""
DEV_MODE_ENVIRONMENTS = frozenset({"dev", "test"})
MAX_ENVIRONMENT_NAME = 63
EMBEDDED_ENVIRONMENT = "dev"
PROTECTED_LOCK_TIMEOUT_SECONDS = 0.5
"""Live writes queue behind a migration waiting for its lock for at most this long (pgroll's default);
the migration is retried with backoff instead (docs/safety.md)."""
_ENVIRONMENT_NAME = re.compile(rf"\A[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_ENVIRONMENT_NAME - 1}}}\Z")
_RESERVED_SCHEMAS = frozenset({"public", "information_schema"})
_MAX_NESTING = 64
"""No valid config nests deeper than a few levels; deeper input is refused before it is walked."""
MAX_REPORTED_PROBLEMS = 20
"""A config with more problems gets the first ones and their count: a 16 MiB file of unknown keys
took minutes to describe (a suggestion each) and printed a hundred megabytes."""
DAY_SECONDS = 86_400.0
MIN_TIMEOUT_SECONDS = 0.001
"""The shortest timeout a database takes: PostgreSQL's ``lock_timeout`` and ``statement_timeout`` and
MySQL's ``max_execution_time`` are whole milliseconds, 0 being no timeout at all."""
# Every model: unknown keys are errors, and numbers are finite (JSON's 1e999 is infinity).
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class BackupSettings(BaseModel):
    """Which provider backs this environment up; provider-specific keys sit beside ``provider``
    and are validated by the provider's options model (:func:`plugin_options`)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    provider: str = Field("pg_dump", description="Backup provider name, e.g. pg_dump or rds-snapshot.")
    keep_last: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Keep this environment's newest N backups; older ones are deleted after each backup and by "
        "`faber backups prune`. A backup a running deploy or restore uses is never deleted. "
        "Default for pg_dump: 10.",
    )

    @model_validator(mode="after")
    def _provider_not_misspelt(self) -> BackupSettings:
        # A misspelt "provider" would silently fall back to pg_dump, a misspelt "keep_last" to 10.
        # Other keys are the provider's (rds-snapshot's "profile" is not a misspelt "provider").
        for key in self.model_extra or {}:
            hint = did_you_mean(key, type(self).model_fields, cutoff=0.85)
            if hint:
                raise ValueError(f"unknown setting {key!r}{hint}")
        return self

    def provider_options(self) -> dict[str, Any]:
        """The keys beside ``provider`` and ``keep_last``: the provider's own options."""
        return dict(self.model_extra or {})


class LockRetrySettings(BaseModel):
    """How a transactional migration that hit ``lock_timeout`` is tried again (docs/safety.md)."""

    model_config = _STRICT

    retries: int = Field(10, ge=0, le=100, description="Further attempts after the first lock timeout.")
    backoff_seconds: float = Field(
        0.5,
        ge=0,
        le=3600,
        description="Wait before the first retry; doubles on each retry, half of it random (jitter).",
    )
    max_backoff_seconds: float = Field(10.0, ge=0, le=3600, description="Upper bound of one wait between attempts.")


TARGET_NAME = _ENVIRONMENT_NAME
"""A fleet's target names follow environment names: ``ENV/TARGET`` names one target, and its backups
live under ``.faber/backups/ENV/TARGET/``."""
VARIABLE_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


def _variable_name(value: str | None) -> str | None:
    if value is not None and not VARIABLE_NAME.match(value):
        raise ValueError(f"{value!r} is not an environment variable name (letters, digits and '_')")
    return value


class CatalogTargets(BaseModel):
    """Targets listed by a query against a catalog database (docs/fleet.md)."""

    model_config = _STRICT

    url_env: str = Field(description="Name of the environment variable holding the catalog database's URL.")
    query: str = Field(
        min_length=1,
        description="SQL returning one row per target: its name, then the name of the environment variable "
        "holding its URL. Run in a read-only transaction.",
    )

    @field_validator("url_env")
    @classmethod
    def _url_env_is_a_name(cls, value: str) -> str:
        return _variable_name(value) or value


class TargetsSettings(BaseModel):
    """Where a fleet environment finds its databases; exactly one source (docs/fleet.md)."""

    model_config = _STRICT

    urls_env: str | None = Field(
        None,
        description="Name of an environment variable holding one database URL per line, "
        "each optionally preceded by the target's name and a space (default name: the database name).",
    )
    file: str | None = Field(
        None,
        description="File in the project with one target per line: its name, a space, and the name of the "
        "environment variable holding its URL. '#' starts a comment line.",
    )
    catalog: CatalogTargets | None = None

    @field_validator("urls_env")
    @classmethod
    def _urls_env_is_a_name(cls, value: str | None) -> str | None:
        return _variable_name(value)

    @model_validator(mode="after")
    def _one_source(self) -> TargetsSettings:
        given = [name for name in ("urls_env", "file", "catalog") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of urls_env, file or catalog (given: {', '.join(given) or 'none'})")
        return self


class RolloutSettings(BaseModel):
    """The order in which a fleet is deployed: a canary, then waves, each gated on the one before."""

    model_config = _STRICT

    canary: int = Field(0, ge=0, le=10_000, description="Targets deployed first, in a wave of their own.")
    waves: list[str] = Field(
        default_factory=lambda: ["100%"],
        min_length=1,
        max_length=100,
        description='After the canary, the share of the fleet deployed by the end of each wave, e.g. ["10%", "100%"]; '
        "increasing, the last one 100%. A wave starts only when every target before it succeeded.",
    )
    on_failure: Literal["stop", "continue"] = Field(
        "stop",
        description="stop: after a target fails, no other target starts (running ones finish). continue: the other "
        "targets of the failed target's wave still run. Either way, no later wave starts.",
    )

    @field_validator("waves")
    @classmethod
    def _increasing_percentages(cls, value: list[str]) -> list[str]:
        percents = [_percent(wave) for wave in value]
        if any(later <= earlier for earlier, later in zip(percents, percents[1:], strict=False)):
            raise ValueError(f"waves must increase: {', '.join(value)}")
        if percents[-1] != 100:
            raise ValueError("the last wave must be 100%, or some targets would never be deployed")
        return value

    def percentages(self) -> list[int]:
        return [_percent(wave) for wave in self.waves]


def _percent(wave: str) -> int:
    match = re.fullmatch(r"([0-9]{1,3})%", wave)
    if match is None or not 1 <= int(match[1]) <= 100:
        raise ValueError(f"{wave!r} is not a share of the fleet such as 10% (1% to 100%)")
    return int(match[1])


class EnvironmentSettings(BaseModel):
    model_config = _STRICT

    database_url_env: str | None = Field(
        None,
        description="Name of the environment variable holding the database URL. "
        "Leave it out for `dev` to use the embedded PostgreSQL under .faber/.",
    )
    mode: Mode | None = Field(
        None, description="dev: may use the tool's interactive dev command. deploy: applies committed migrations only."
    )
    protected: bool | None = Field(None, description="Protected environments get backups, approval and rollback.")
    backup_before_migrate: bool | None = None
    require_approval: bool | None = None
    auto_rollback: bool | None = Field(
        None, description="Restore the pre-migration backup when a migration or the post-deployment health check fails."
    )
    health_checks: list[str] = Field(
        default_factory=lambda: ["connectivity", "schema", "migrations"],
        description="Checks run before and after deploying.",
    )
    lock_wait_seconds: float = Field(
        60.0,
        ge=0,
        le=DAY_SECONDS,
        description="How long to wait for another faber run on the same database to finish.",
    )
    connect_timeout_seconds: int = Field(
        10, ge=1, le=600, description="Connection timeout; after one attempt times out, the run does not wait again."
    )
    runner_load_timeout_seconds: float = Field(
        300.0,
        gt=0,
        le=3600,
        description="How long the TypeORM and Sequelize runners may take over one step before any migration "
        "runs: loading a project file (the data source, the config, a migration) or starting the ORM's connection. "
        "A step that takes longer stops the runner and fails the run, naming the step and its file.",
    )
    query_lock_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="lock_timeout of faber's own queries (health checks, status, history, locks, preflight): "
        "blocked longer, they fail naming the session that blocks them. Migration sessions use lock_timeout_seconds.",
    )
    query_statement_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=DAY_SECONDS,
        description="statement_timeout of faber's own queries. Migration sessions use statement_timeout_seconds.",
    )
    backup: BackupSettings = Field(default_factory=BackupSettings)
    lint: Literal["block", "warn", "off"] | None = Field(
        None,
        description="Lint pending migrations with squawk. block: its errors (lock risks, breaking changes) stop the "
        "deploy; warn: report only. Default: block in protected environments, warn elsewhere.",
    )
    lint_small_table_rows: int = Field(
        10_000,
        ge=0,
        le=10**12,
        description="A lock-risk lint finding on a table that statistics show holds at most this many rows, or on "
        "a table created earlier in the same deploy, is informational: its lock is brief (docs/safety.md).",
    )
    lint_rehearsal_seconds: float = Field(
        120.0,
        ge=0,
        le=DAY_SECONDS,  # a timeout of ~1e10 s overflows the clocks the rehearsal's programs are waited on with
        description="A deploy lints code migrations (TypeORM, Sequelize) from the SQL they run on a throwaway "
        "copy of the database; the rehearsal is stopped after this long and the lint reported as not run. "
        "0: never rehearse at deploy.",
    )
    lock_timeout_seconds: float | None = Field(
        None,
        ge=0,
        le=DAY_SECONDS,
        description="lock_timeout of every migration session; 0 turns it off. "
        "Default: 0.5 in protected environments, off elsewhere.",
    )
    statement_timeout_seconds: float | None = Field(
        None, ge=0, le=7 * DAY_SECONDS, description="statement_timeout of every migration session; off when unset or 0."
    )
    lock_retry: LockRetrySettings = Field(default_factory=LockRetrySettings)
    preflight: Literal["warn", "wait", "abort", "off"] = Field(
        "warn",
        description="Sessions that hold locks on the tables the migrations touch, or long transactions: "
        "warn reports them and proceeds under lock_timeout and retry; wait waits up to "
        "preflight_wait_seconds for them to end; abort stops before anything is applied.",
    )
    preflight_wait_seconds: float = Field(60.0, ge=0, le=DAY_SECONDS)
    long_transaction_seconds: float = Field(
        5.0,
        ge=0,
        le=DAY_SECONDS,
        description="A transaction open this long counts as a blocker even without locks on the tables.",
    )
    requires_success_in: str | None = Field(
        None,
        description="An environment (e.g. staging) in which every pending migration, with the same checksum, "
        "must have been deployed successfully first.",
    )
    targets: TargetsSettings | None = Field(
        None,
        description="Makes the environment a fleet of databases (database per tenant, shards) instead of one "
        "database_url_env: faber migrate deploys each target (docs/fleet.md).",
    )
    rollout: RolloutSettings | None = Field(None, description="A fleet's canary, waves and failure policy.")
    restore_with_app_writes: Literal["refuse", "warn", "allow"] | None = Field(
        None,
        description="When rows were written since the backup by anything but faber's migrations (the application), "
        "a restore would discard them. refuse: no automatic restore; the error names the tables and the manual "
        "commands, and `faber rollback` needs --discard-app-writes. warn: restore and report what was discarded. "
        "allow: restore. Default: refuse in protected environments, warn elsewhere.",
    )
    out_of_order: bool = Field(
        False,
        description="Apply a pending migration that sorts before one already applied (e.g. from a branch merged "
        "late). Off: such a deploy is refused before the lock and the backup, naming both migrations.",
    )
    require_committed_migrations: bool = Field(
        True,
        description="Deploy mode: refuse pending migrations whose files are untracked or differ from git's HEAD, "
        "before the lock and the backup. Not checked outside a git work tree (a release artifact) or without git "
        "(the run says so). False: deploy them anyway (an emergency fix not yet committed).",
    )

    @field_validator(
        "query_lock_timeout_seconds",
        "query_statement_timeout_seconds",
        "lock_timeout_seconds",
        "statement_timeout_seconds",
    )
    @classmethod
    def _timeout_is_off_or_at_least_a_millisecond(cls, value: float | None) -> float | None:
        if value and value < MIN_TIMEOUT_SECONDS:
            raise ValueError(
                f"{value:g} s is shorter than 1 ms, the finest timeout the database takes: it would round to 0, "
                f"which turns the timeout off; set at least {MIN_TIMEOUT_SECONDS:g}"
            )
        return value

    @field_validator("database_url_env")
    @classmethod
    def _database_url_env_is_a_name(cls, value: str | None) -> str | None:
        return _variable_name(value)  # it is named in shell commands faber suggests (psql $NAME)

    @model_validator(mode="after")
    def _one_database_or_a_fleet(self) -> EnvironmentSettings:
        if self.targets is not None and self.database_url_env is not None:
            raise ValueError("give database_url_env (one database) or targets (a fleet), not both")
        if self.rollout is not None and self.targets is None:
            raise ValueError("rollout orders the targets of a fleet: set targets too")
        return self

    def resolved(self, name: str) -> EnvironmentSettings:
        """A copy with every unset setting filled in from the defaults for ``name``."""
        mode = self.mode or ("dev" if name in DEV_MODE_ENVIRONMENTS else "deploy")
        protected = self.protected if self.protected is not None else mode == "deploy"

        def pick(value: bool | None) -> bool:
            return protected if value is None else value

        return self.model_copy(
            update={
                "mode": mode,
                "protected": protected,
                "backup_before_migrate": pick(self.backup_before_migrate),
                "require_approval": pick(self.require_approval),
                "auto_rollback": pick(self.auto_rollback),
                "lint": self.lint or ("block" if protected else "warn"),
                "restore_with_app_writes": self.restore_with_app_writes or ("refuse" if protected else "warn"),
                "lock_timeout_seconds": (PROTECTED_LOCK_TIMEOUT_SECONDS if protected else 0.0)
                if self.lock_timeout_seconds is None
                else self.lock_timeout_seconds,
            }
        )


class DatabaseConfig(BaseModel):
    """Sections named after a tool (``prisma``, ``typeorm``, ...) are passed to that tool's handler.

    Which names are tools is known only once the plugins are loaded:
    :meth:`faber_core.plugins.Plugins.check_config` refuses a section no installed tool owns.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    migration_tool: str = Field(
        None,  # type: ignore[assignment]  # _name_the_tool names it or refuses the config
        description="The migration tool handler, e.g. prisma, typeorm, sequelize. May be left out when the "
        "database section has exactly one tool section: its name is the tool.",
    )
    environments: dict[str, EnvironmentSettings] = Field(default_factory=dict)
    faber_schema: str = Field(
        "faber",
        description="Schema for faber's own tables; never included in backups or touched by a restore, "
        "so it must hold nothing else (not public, not the application's schema).",
    )

    @field_validator("environments")
    @classmethod
    def _environment_names(cls, value: dict[str, EnvironmentSettings]) -> dict[str, EnvironmentSettings]:
        for name in value:
            if not _ENVIRONMENT_NAME.match(name):
                raise ValueError(f"invalid environment name {name!r}: use letters, digits, '.', '_' and '-'")
        return value

    @field_validator("faber_schema")
    @classmethod
    def _own_schema(cls, value: str) -> str:
        if value in _RESERVED_SCHEMAS or value.startswith("pg_"):
            raise ValueError(
                f"{value!r} holds other objects, and backups leave faber's schema out: "
                "use a schema of faber's own, e.g. faber"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
            raise ValueError(f"{value!r} is not a plain schema name (letters, digits and '_', at most 63)")
        return value

    @model_validator(mode="after")
    def _tool_sections_are_objects(self) -> DatabaseConfig:
        for key, value in self.tool_sections().items():
            hint = did_you_mean(key, type(self).model_fields)
            if hint:
                raise ValueError(f"unknown setting {key!r}{hint}")
            if not isinstance(value, dict):
                raise ValueError(f"{key!r} must be an object: the options of the {key} migration tool")
        return self

    @model_validator(mode="after")
    def _requires_success_in_a_known_environment(self) -> DatabaseConfig:
        """A mistyped ``requires_success_in`` is found as the config is read, not by the deploy alone
        once ``faber status`` and ``--dry-run`` have passed."""
        known = sorted({*self.environments, EMBEDDED_ENVIRONMENT})
        for name, settings in self.environments.items():
            required = settings.requires_success_in
            if required is not None and required not in known:
                hint = did_you_mean(required, known, cutoff=0.5)
                raise ValueError(
                    f"environments.{name}.requires_success_in names an unknown environment: {required!r}{hint}"
                    f" (configured: {', '.join(known)})"
                )
        return self

    @model_validator(mode="after")
    def _name_the_tool(self) -> DatabaseConfig:
        """No default tool: faber does not guess which handler owns the project's migrations."""
        if self.migration_tool is None:
            sections = sorted(self.tool_sections())
            if len(sections) != 1:
                raise ValueError(
                    'migration_tool is required: the project\'s migration tool, e.g. "migration_tool": "prisma" '
                    "(faber plugins lists the installed tools)"
                    + (f"; the sections {', '.join(sections)} do not say which" if sections else "")
                )
            self.migration_tool = sections[0]
        return self

    def tool_sections(self) -> dict[str, Any]:
        """Every key that is not a setting of faber's: a migration tool's options, by tool name."""
        return dict(self.model_extra or {})

    def tool_options(self, tool: str) -> dict[str, Any]:
        """The raw section ``database.<tool>``: plugins read it through ``RunContext.tool_options``."""
        return self.tool_sections().get(tool, {})


class FaberConfig(BaseModel):
    model_config = _STRICT

    database: DatabaseConfig

    def environment(self, name: str) -> EnvironmentSettings:
        """The resolved settings of ``name``; ``dev`` exists even when not configured."""
        if not _ENVIRONMENT_NAME.match(name):
            raise ConfigError(
                f"Invalid environment name: {echoed(name, show=repr)}",
                suggestions=[
                    f"Environment names are 1 to {MAX_ENVIRONMENT_NAME} letters, digits, '.', '_' and '-', "
                    "the first a letter or digit"
                ],
            )
        settings = self.database.environments.get(name)
        if settings is None:
            if name != EMBEDDED_ENVIRONMENT:
                known = sorted({*self.database.environments, EMBEDDED_ENVIRONMENT})
                # Looser than for settings: an abbreviation such as "prod" is what is usually typed.
                hint = did_you_mean(name, known, cutoff=0.5)
                raise ConfigError(
                    f"Unknown environment: {name}{hint}",
                    suggestions=[
                        *([] if hint else [f"Configured environments: {', '.join(known)}"]),
                        f"Add it under database.environments in {CONFIG_PATH}",
                    ],
                )
            settings = EnvironmentSettings()
        return settings.resolved(name)


def config_file(project_dir: Path) -> Path:
    return project_dir / CONFIG_PATH


def load_config(project_dir: Path) -> FaberConfig:
    """Read and validate the config: JSON without duplicate keys, nested at most a few levels,
    every key known (with a suggestion when misspelt), booleans and numbers as JSON types, numbers
    finite and within bounds."""
    path = config_file(project_dir)
    try:
        path.stat()
    except PermissionError as exc:
        # A folder on its way faber may not search (a project directory of another user's, mode
        # 700): every check below would raise it as an unexpected error, so it is refused as an
        # unreadable config is.
        raise ConfigError(f"Cannot read {CONFIG_PATH}: {exc}") from None
    except OSError:
        pass  # missing, or a symlink loop: the checks below say which
    if path.is_dir():
        raise ConfigError(
            f"The configuration {path} is a directory, not a file",
            suggestions=["Move that directory out of the way, then create the config with: faber init"],
        )
    if path.exists() and not path.is_file():
        # Not opened: a FIFO would wait for a writer, a device such as /dev/zero never ends.
        raise ConfigError(
            f"The configuration {path} is not a regular file (a FIFO, device or socket)",
            suggestions=["Replace it with the config file, or create one with: faber init --force"],
        )
    if not path.is_file():
        raise ConfigError(
            f"No faber configuration found at {path}",
            suggestions=["Create one with: faber init", "Or point at your project with --cwd DIR or FABER_DB_CWD"],
        )
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"The configuration {path} is larger than {MAX_CONFIG_BYTES // 1024**2} MiB: refused")
        # A byte order mark, as Windows editors write, is no content (a request document may carry one too).
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read {CONFIG_PATH}: {exc}") from None
    raw = _parse_json(text)
    _refuse_unusable_text(raw)
    try:
        return FaberConfig.model_validate(raw, strict=True)
    except ValidationError as exc:
        problems = _masking_credentials(raw, _reported(exc, _describe))
        raise ConfigError(
            f"Invalid configuration {CONFIG_PATH}: " + "; ".join(problems),
            suggestions=["See the accepted settings with: faber config schema"],
            result={"problems": problems},
        ) from None


Options = typing.TypeVar("Options", bound=BaseModel)


def plugin_options(model: type[Options], raw: dict[str, Any], where: str) -> Options:
    """``raw`` (a tool's section, a provider's backup keys) validated by the plugin's options model,
    as strictly as faber's own settings: unknown keys refused with a suggestion, JSON types kept.
    ``where`` is the section's place in the config, for the messages."""
    # Validated from JSON in strict mode, so "yes" is no boolean while a path or a date still reads from text.
    try:
        return _refusing_unknown_keys(model).model_validate_json(json.dumps(raw), strict=True)
    except ValidationError as exc:
        problems = _reported(exc, lambda error: _describe_option(error, model, where))
        raise ConfigError(
            f"Invalid configuration {CONFIG_PATH}: " + "; ".join(problems),
            suggestions=["See the accepted settings with: faber config schema"],
            result={"problems": problems},
        ) from None


@functools.cache
def _refusing_unknown_keys(model: type[Options]) -> type[Options]:
    """``model`` refusing unknown keys, whatever its author's model says about extras.

    Built at once even when ``model`` defers its build (as plugins' options models do, so that
    faber's start-up does not build them): a fleet's targets validate with it from several threads."""
    config = ConfigDict(extra="forbid", defer_build=False)
    return type(model.__name__, (model,), {"model_config": config, "__module__": model.__module__})


def _texts(raw: Any) -> typing.Iterator[tuple[tuple[Any, ...], str]]:
    """Every text of the parsed config ``raw``, keys and values, with the keys leading to it."""
    pending: list[tuple[tuple[Any, ...], Any]] = [((), raw)]
    while pending:
        location, value = pending.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                yield (*location, key), key
                pending.append(((*location, key), item))
        elif isinstance(value, list):
            pending += [((*location, index), item) for index, item in enumerate(value)]
        elif isinstance(value, str):
            yield location, value


def _refuse_unusable_text(raw: Any) -> None:
    """Refuse a NUL character or a lone surrogate (JSON's ``\\u0000``, ``\\udc80``) anywhere in the
    config: no name, path, program argument or SQL can hold one, and a plugin's option would
    otherwise fail only where it is used (a Node runner's argument, a file's path)."""
    where = unusable_text(raw)
    if where is not None:
        raise ConfigError(
            f"Invalid configuration {CONFIG_PATH}: {where}: holds a NUL character or a lone surrogate "
            "(\\u0000, \\ud800 to \\udfff), which no setting can use",
            suggestions=["Remove the character; check the file was written as UTF-8 text"],
        )


def unusable_text(raw: Any) -> str | None:
    """Where the parsed JSON ``raw`` holds a text with a NUL character or a lone surrogate, which
    no name, path or SQL parameter can hold (dotted keys, ``(root)`` for the whole); None if nowhere."""
    for location, text in _texts(raw):
        if "\0" in text or not _encodable(text):
            return ".".join(json.dumps(str(part))[1:-1] for part in location) or "(root)"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reported(exc: ValidationError, describe: typing.Callable[[Any], str]) -> list[str]:
    """The first :data:`MAX_REPORTED_PROBLEMS` problems of ``exc`` described, and how many more."""
    errors = exc.errors(include_url=False, include_input=False)
    problems = [describe(error) for error in errors[:MAX_REPORTED_PROBLEMS]]
    if len(errors) > MAX_REPORTED_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_REPORTED_PROBLEMS} more problems")
    return problems


def _masking_credentials(raw: Any, problems: list[str]) -> list[str]:
    """``problems`` with every text of the config ``raw`` that may hold a credential masked: a
    database URL pasted where the name of its variable belongs (``database_url_env``) is quoted,
    password and all, by the problem that names it. A URL with a password holds an '@'."""
    shown = "\n".join(problems)
    redactor = Redactor()
    for _location, text in _texts(raw):
        # Only texts the problems quote: learning every URL of a config quoting a million took minutes.
        if ("@" in text or "password" in text.lower()) and any(form in shown for form in secret_forms(text)):
            redactor.add(text)
    return [redactor.redact(problem) for problem in problems]


def _describe_option(error: Any, model: type[BaseModel], where: str) -> str:
    location = ".".join([where, *(str(part) for part in error["loc"])])
    if error["type"] == "extra_forbidden":
        known = known_fields(model, error["loc"][:-1])
        return f"{location}: unknown setting{did_you_mean(str(error['loc'][-1]), known)}"
    if error["type"] == "value_error":
        return f"{location}: {error['ctx']['error']}"
    return f"{location}: {error['msg']}"


def _parse_json(text: str) -> Any:
    def malformed(reason: str) -> ConfigError:
        return ConfigError(
            f"Malformed configuration {CONFIG_PATH}: {reason}",
            suggestions=["Fix the JSON syntax", "Check the format with: faber config schema"],
        )

    if _nesting_depth(text) > _MAX_NESTING:
        raise malformed(f"objects and arrays nested more than {_MAX_NESTING} levels deep")
    try:
        return json.loads(text, object_pairs_hook=refuse_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise malformed(f"{exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except ValueError as exc:  # a duplicate key
        raise malformed(str(exc)) from None


def _nesting_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings, without recursing (a hostile file may
    nest 100,000 levels, which would exhaust Python's recursion limit in ``json.loads``)."""
    depth = deepest = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*(?:"|\Z)|[\[\]{}]', text):
        char = token.group()
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object (which one was meant?)")
        seen[key] = value
    return seen


def _describe(error: Any) -> str:
    """One validation problem: where, and what is wrong (with a suggestion for a misspelt key)."""
    location = ".".join(str(part) for part in error["loc"]) or "(root)"
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        return f"{location}: unknown setting{did_you_mean(key, _known_keys(error['loc'][:-1]))}"
    if error["type"] == "value_error":
        return f"{location}: {error['ctx']['error']}"
    return f"{location}: {error['msg']}"


def _known_keys(location: tuple[Any, ...]) -> list[str]:
    """The setting names accepted at ``location`` (a path of keys from the root)."""
    annotation: Any = FaberConfig
    for part in location:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
            if isinstance(annotation, types.UnionType):  # an optional section: ``RolloutSettings | None``
                annotation = next((arg for arg in typing.get_args(annotation) if arg is not type(None)), None)
        else:  # dict[str, Model]: the key is a name the user chose
            annotation = typing.get_args(annotation)[-1] if typing.get_args(annotation) else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []
