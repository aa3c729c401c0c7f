"""The four stages as plain functions over a run directory.

Each stage reads the files earlier stages wrote, writes its own (atomically), and records
a summary in `stages/<name>.json`. Requests to models go through `send_shard`, which the
Prefect flow replaces with a task so that every shard is a task run; called directly, as
the CLI's single-stage commands do, the stages need no orchestrator. One module a stage.
"""

from distill.stages.session import (PipelinedSender, RequestPath, SendShard, StageInputError,  # noqa: F401
                                    run_session, send_shard, send_shards, tokens_of, usage_so_far)
from distill.stages.generate import generate_stage, write_diversity_report  # noqa: F401
from distill.stages.filter import export_filtered, filter_stage, near_duplicate_drops  # noqa: F401
from distill.stages.finetune import finetune_stage, split_heldout, student_base_dir  # noqa: F401
from distill.stages.evaluate import evaluate_stage  # noqa: F401
from distill.stages.compress import compress_stage  # noqa: F401
