"""The base of every component's settings: typed, validated, documented, immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    """Settings of one component: unknown keys are refused and values cannot change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)
