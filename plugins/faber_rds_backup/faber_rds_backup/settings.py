"""The environment's ``backup`` settings for ``rds-snapshot``: the options model faber validates
the section with before any run (declared in ``faber_backup_providers``).

Example::

    "backup": {"provider": "rds-snapshot", "db_instance_identifier": "prod-db", "region": "eu-west-1",
               "retention": {"keep_last": 10, "max_age_days": 30}, "restore_mode": "swap"}

Credentials never sit here: boto3's standard chain (environment, shared config and ``profile``,
SSO, instance or task role) supplies them.
"""

from __future__ import annotations

import re
from typing import Literal

from faber_core.context import RunContext
from faber_core.errors import ConfigError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROVIDER = "rds-snapshot"
_IDENTIFIER = re.compile(r"\A[A-Za-z](?!.*--)[A-Za-z0-9-]{0,62}(?<!-)\Z")


class RetentionSettings(BaseModel):
    """Which of faber's snapshots survive a prune; a snapshot is kept when any rule keeps it."""

    model_config = ConfigDict(extra="forbid")

    keep_last: int | None = Field(None, ge=1, description="Always keep the newest N snapshots.")
    max_age_days: float | None = Field(None, gt=0, description="Keep snapshots younger than this.")

    @property
    def enabled(self) -> bool:
        return self.keep_last is not None or self.max_age_days is not None


class RdsBackupSettings(BaseModel):
    """The keys of ``backup`` beside faber's own ``provider`` and ``keep_last``."""

    # Built when first used: faber validates with a model derived from it (docs/plugins.md, Options).
    model_config = ConfigDict(extra="forbid", defer_build=True)

    db_instance_identifier: str | None = None
    db_cluster_identifier: str | None = Field(None, description="An Aurora cluster: faber takes cluster snapshots.")
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    profile: str | None = Field(None, description="A profile of the shared AWS config, else the default chain.")
    wait_timeout_seconds: float = Field(3600, gt=0, description="How long to wait for a snapshot or an instance.")
    poll_interval_seconds: float = Field(15, gt=0, le=300, description="How often to ask AWS while waiting.")
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    restore_mode: Literal["swap", "side-by-side"] = "swap"
    retry_mode: Literal["standard", "adaptive"] = Field("standard", description="botocore's retry mode.")
    max_attempts: int = Field(
        8, ge=0, le=50, description="botocore's retries of a throttled or failed call, after the first attempt."
    )
    endpoint_url: str | None = Field(None, description="Another RDS endpoint (a VPC endpoint, or a test server).")

    @field_validator("db_instance_identifier", "db_cluster_identifier")
    @classmethod
    def _rds_identifier(cls, value: str | None) -> str | None:
        if value is not None and not _IDENTIFIER.match(value):
            raise ValueError(
                "not an RDS identifier (1-63 letters, digits or hyphens, starting with a letter, "
                "no double or trailing hyphen)"
            )
        return value

    @model_validator(mode="after")
    def _one_target(self) -> RdsBackupSettings:
        if (self.db_instance_identifier is None) == (self.db_cluster_identifier is None):
            raise ValueError("set exactly one of db_instance_identifier and db_cluster_identifier")
        return self

    @property
    def is_cluster(self) -> bool:
        return self.db_cluster_identifier is not None

    @property
    def target_identifier(self) -> str:
        return self.db_cluster_identifier or self.db_instance_identifier or ""


def load_settings(context: RunContext) -> RdsBackupSettings:
    """The environment's backup settings; faber's ``keep_last`` is the same as ``retention.keep_last``."""
    settings = context.backup_options(RdsBackupSettings)
    keep_last = context.settings.backup.keep_last
    if keep_last is not None:
        if settings.retention.keep_last not in (None, keep_last):
            raise ConfigError(
                f"config: database.environments.{context.environment}.backup: keep_last and retention.keep_last "
                "differ: set one of them",
                suggestions=["See docs/rds-backup.md for every setting"],
            )
        settings.retention.keep_last = keep_last
    return settings
