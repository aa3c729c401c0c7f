"""The pipeline's stages, in order: the one list that the CLI, the Prefect flow, the run
directory, resume and the report iterate. Adding a stage is one module in this package (a
class with the `pipeline.stage.Stage` interface) and one line here.

The stage modules import their components inside `run`, so listing the stages (for the CLI's
help, say) costs no model library.
"""

from __future__ import annotations

from pipeline.stage import Stage
from pipeline.stages.compress import CompressStage
from pipeline.stages.evaluate import EvaluateStage
from pipeline.stages.filter import FilterStage
from pipeline.stages.finetune import FinetuneStage
from pipeline.stages.generate import GenerateStage

STAGES: tuple[Stage, ...] = (
    GenerateStage(),
    FilterStage(),
    FinetuneStage(),
    CompressStage(),
    EvaluateStage(),
)


def stage_names() -> tuple[str, ...]:
    """The names of the stages, in order."""
    return tuple(stage.name for stage in STAGES)


def stage_named(name: str) -> Stage:
    """The stage called `name`; an unknown name is a ValueError listing the known ones."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; known: {', '.join(stage_names())}")
