"""The RDS client, and what an AWS failure means for the person running faber.

Throttling is botocore's job: its ``standard``/``adaptive`` retry modes back off with jitter and
retry throttling and transient errors up to ``max_attempts``; faber never loops on a call itself.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from faber_core.context import RunContext
from faber_core.errors import ConfigError

from faber_rds_backup.settings import RdsBackupSettings

# boto3's clients are built at run time; their methods are not visible to a type checker.
RdsClient = Any

ACCESS_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
NOT_FOUND = frozenset({"DBInstanceNotFound", "DBInstanceNotFoundFault", "DBClusterNotFoundFault"})
SNAPSHOT_NOT_FOUND = frozenset({"DBSnapshotNotFound", "DBSnapshotNotFoundFault", "DBClusterSnapshotNotFoundFault"})
QUOTA_EXCEEDED = frozenset({"SnapshotQuotaExceeded", "SnapshotQuotaExceededFault"})
ALREADY_EXISTS = frozenset({"DBSnapshotAlreadyExists", "DBClusterSnapshotAlreadyExistsFault"})
THROTTLED = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException", "RequestThrottled"}
)
BAD_CREDENTIALS = frozenset(
    {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch", "ExpiredToken", "AuthFailure"}
)


def rds_client(context: RunContext, settings: RdsBackupSettings, *, quick_seconds: float | None = None) -> RdsClient:
    """The RDS client, its credentials' secrets told to the run's redactor: AWS quotes the signed
    request, session token included, in some errors (SignatureDoesNotMatch), which faber reports.

    ``quick_seconds``: for a look that must not hold up the command (``faber status``), each call
    is tried once and given up after that many seconds to connect, and as many to answer.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    try:
        session = boto3.Session(profile_name=settings.profile, region_name=settings.region)
    except ProfileNotFound:
        raise ConfigError(
            f"AWS profile {settings.profile!r} is not in the shared AWS config",
            suggestions=["List profiles with: aws configure list-profiles", "Or remove backup.profile"],
        ) from None
    try:
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except BotoCoreError:
        frozen = None  # the first call fails the same way, and is reported as an AWS failure
    if frozen is not None:
        context.redactor.add(frozen.secret_key)
        context.redactor.add(frozen.token)
    if quick_seconds is None:
        config = Config(retries={"mode": settings.retry_mode, "max_attempts": settings.max_attempts})
    else:
        config = Config(
            retries={"mode": settings.retry_mode, "total_max_attempts": 1},
            connect_timeout=quick_seconds,
            read_timeout=quick_seconds,
        )
    return session.client("rds", endpoint_url=settings.endpoint_url, config=config)


@dataclass(frozen=True)
class AwsFailure:
    """One failed AWS call, reduced to what faber reports: the error code and AWS's own message."""

    code: str
    message: str
    operation: str

    @property
    def summary(self) -> str:
        return f"{self.operation}: {self.code}: {self.message}".strip(": ")


def aws_failure(exc: Exception) -> AwsFailure | None:
    """The code and message of a botocore error; None for anything that is not one."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, ClientError):
        error: dict[str, Any] = exc.response.get("Error", {})
        return AwsFailure(str(error.get("Code", "Unknown")), str(error.get("Message", "")), exc.operation_name)
    if isinstance(exc, NoCredentialsError):
        return AwsFailure("NoCredentials", str(exc), "")
    if isinstance(exc, BotoCoreError):
        return AwsFailure(type(exc).__name__, str(exc), "")
    return None


def aws_cli(settings: RdsBackupSettings, *args: str) -> str:
    """The ``aws rds ...`` command a person can paste to do one step by hand."""
    words = ["aws", "rds", *args, "--region", settings.region]
    if settings.profile:
        words += ["--profile", settings.profile]
    if settings.endpoint_url:
        words += ["--endpoint-url", settings.endpoint_url]
    return shlex.join(words)
