"""The spec's request document: what an orchestrator sends instead of a command line.

    {"operation": "deploy-migrations",
     "parameters": {"environment": "production", "dry_run": false, "skip_backup": false,
                    "skip_health_check": false, "working_directory": "/srv/app"}}

``faber request`` reads it from a file or stdin and :func:`faber_core.api.request` takes it as
a dict; both answer with the spec's result document. Unknown keys and values of the wrong
JSON type (``"dry_run": "yes"``) are rejected, not guessed at.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OPERATIONS = ("deploy-migrations", "preview-migrations")


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    environment: str = Field(description="Environment name from the config (dev, staging, production, ...).")
    dry_run: bool = Field(False, description="Preview only, no changes.")
    skip_backup: bool = Field(False, description="Skip the automatic backup (not recommended).")
    skip_health_check: bool = Field(False, description="Skip the health checks before and after.")
    working_directory: str | None = Field(None, description="Project directory (as --cwd).")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    operation: Literal["deploy-migrations", "preview-migrations"]
    parameters: RequestParameters

    @property
    def dry_run(self) -> bool:
        return self.operation == "preview-migrations" or self.parameters.dry_run
