"""The one interface every pipeline stage implements, and what a stage is given to run.

A stage is a small object with a name, the run-directory paths it reads and writes, a rule
for whether the config enables it, and `run(context) -> summary`. `pipeline.stages.STAGES`
lists them in order; the CLI, the Prefect flow, resume (skip what is finished) and the
report all iterate that list, so adding a stage is one module and one line there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

if TYPE_CHECKING:
    from core.rundir import RunDir
    from pipeline.config import PipelineConfig
    from pipeline.models import ModelSessions
    from pipeline.requests import RequestPath, SendShard

# Where models built once (the embedded students' transformers copies) live unless a run names another folder.
DEFAULT_CACHE = Path.home() / ".cache" / "distill"

S = TypeVar("S", bound="StageSummary")


@dataclasses.dataclass
class StageSummary:
    """What a finished stage did, written to `stages/<name>.json`: its presence marks the stage
    finished, and the report is built from these files. Each stage subclasses it with its
    own fields; `seconds` is the stage's wall time."""

    seconds: float = 0.0

    def to_json(self) -> dict:
        """The summary as JSON-able data (the file's content)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls: type[S], data: dict) -> S:
        """A summary read back from its file; keys this version does not know are ignored, and
        fields an older run did not write keep their defaults."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclasses.dataclass
class StageContext:
    """Everything a stage runs with: the config, the run directory, the models (opened on first
    use), the request path and the shard sender (the Prefect flow's, or the plain in-process one)."""

    config: "PipelineConfig"
    rundir: "RunDir"
    cache_dir: Path
    models: "ModelSessions"
    path: "RequestPath"
    send: "SendShard"
    progress: bool = True

    def __post_init__(self) -> None:
        # Whatever sends the shards, a batch-mode endpoint's go through the Batch API.
        from pipeline.requests import by_endpoint_mode

        self.send = by_endpoint_mode(self.send)


class Stage(Protocol):
    """One step of the pipeline. A stage that sends requests also has `endpoints(config)`: the model
    endpoints it sends to, by config key, checked before it starts (pipeline.session.check_endpoints)."""

    name: ClassVar[str]
    description: ClassVar[str]
    reads: ClassVar[tuple[str, ...]]  # run-directory paths it reads
    writes: ClassVar[tuple[str, ...]]  # run-directory paths it writes
    sends_requests: ClassVar[bool]  # it asks models (the flow runs it as a subflow of task-run shards)
    scales_out: ClassVar[bool]  # its shards may go to the configured task runner (Dask)
    summary_type: ClassVar[type[StageSummary]]

    def enabled(self, config: "PipelineConfig") -> bool:
        """Whether the config asks for this stage (a disabled stage is skipped, not failed)."""
        ...

    def preflight(self, config: "PipelineConfig") -> None:
        """Checks that need no work (a model directory that must exist, say), made before any
        stage of a run starts; raises ConfigError or StageInputError."""
        ...

    def run(self, context: StageContext) -> StageSummary:
        """Do the stage's work in the run directory and return its summary."""
        ...
