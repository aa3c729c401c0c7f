"""The run report published as Prefect artifacts of the flow run: the whole report (markdown),
the headline, and a table of every model's quality and cost."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from core.rundir import RunDir
from pipeline.report import headline, model_table_rows


def publish_report_artifacts(report: dict, rundir: RunDir) -> list:
    """Create the report's artifacts in the current flow run; return their ids."""
    ids = [create_markdown_artifact(key="distill-report", markdown=rundir.report_md.read_text(encoding="utf-8"),
                                    description=f"Report of {rundir.root}")]
    recommendation = (report.get("quality_vs_cost") or {}).get("recommendation") or ""
    ids.append(create_markdown_artifact(key="distill-headline",
                                        markdown=f"**{headline(report)}**\n\n{recommendation}\n\n"
                                                 f"Full report: `{rundir.root / 'report.html'}`",
                                        description="Headline: win rate, its interval and the cost ratio"))
    rows = model_table_rows(report)
    if rows:
        ids.append(create_table_artifact(key="distill-models", table=rows,
                                         description="Quality against the teacher and cost, per model"))
    return ids
