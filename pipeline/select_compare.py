"""`distill select-compare`: data selection strategies compared on the same generated pool.

One generate stage fills the run directory's pool (generated.jsonl), as `distill run` would.
A share of the pool (`finetune.heldout_records`, seeded) is held out once, for every strategy:
its prompts are the `heldout` evaluation set of every strategy's student, and no strategy may
select them. Then, for each strategy, a run directory of its own under `RUN/select/<strategy>/`
gets the rest of the pool (the generate stage counts as finished there) and runs the filter
stage with `filter.selection: <strategy>` and `filter.top_k: K`, the finetune stage on all it
keeps (nothing else held out) and the evaluate stage, with the same settings for every
strategy: the config's, except that compression and the base student's evaluation are off (they
do not depend on the selection). Every stage is the pipeline's own, run through its session; the
strategies' runs share the teacher and judge (one embedded server). A strategy that rates with
the judge reuses the ratings another strategy already paid for (the same requests, by content).

The comparison (`RUN/select/compare.json`, a table and a plot) is in the run's report: per
strategy the records kept, the judge tokens spent on selection, the training loss, the win
rate against the teacher (meaningful when the judge is informative: the evaluate summary's
`judge_diagnostics.informative`, where it reports one) and, where the evaluate summary holds
them, the student's fidelity to the teacher (the teacher's answers' NLL, answer similarity,
ROUGE-L); otherwise those columns say "not measured". A rerun resumes: finished stages and
strategies are skipped.
"""

from __future__ import annotations

import logging
import shutil
import typing
from pathlib import Path

from core.errors import StageInputError
from core.records import read_records, write_json, write_jsonl
from core.rundir import RunDir
from filters.config import FilterConfig
from pipeline.config import PipelineConfig
from pipeline.report import write_report
from pipeline.report_select import COMPARE_FILE, COMPARE_PLOT, SELECT_DIR
from pipeline.session import check_same_config, open_session, run_named_stage

log = logging.getLogger(__name__)

HELDOUT_FILE = "heldout.jsonl"
STAGES_PER_STRATEGY = ("filter", "finetune", "evaluate")
# `ifd`: Superfiltering's IFD selection instead of the judge, with K as its top_k.
STRATEGIES = tuple(s for s in typing.get_args(FilterConfig.model_fields["selection"].annotation)
                   if s != "threshold") + ("ifd",)
# Where an evaluate summary may hold a contestant's fidelity to the teacher, and its numbers.
FIDELITY_KEYS = ("teacher_answer_nll", "answer_similarity", "answer_rouge_l")
FALLBACK_SET = "vicuna_80"


def check_strategies(strategies: list[str], k: int) -> None:
    """Known, distinct strategies and a positive K; a clear error otherwise."""
    unknown = [name for name in strategies if name not in STRATEGIES]
    if unknown or not strategies:
        raise StageInputError(f"--strategies: unknown {unknown or 'none given'}; known: {', '.join(STRATEGIES)} "
                              "(threshold keeps no fixed number of records, so it is not a budget strategy)")
    if len(set(strategies)) != len(strategies):
        raise StageInputError(f"--strategies: {','.join(strategies)} names a strategy twice")
    if k < 1:
        raise StageInputError(f"--k must be a positive number of records, got {k}")


def strategy_config(config: PipelineConfig, strategy: str, k: int, heldout_file: Path | None) -> PipelineConfig:
    """One strategy's config: the base config with the selection at K, nothing held out of training
    (the common held-out prompts are already out of the pool), the common held-out file as the
    `heldout` evaluation set, no compression and no base-student evaluation."""
    if strategy == "ifd":
        ifd = config.filter.ifd.model_copy(update={"enabled": True, "mode": "instead_of_judge", "top_k": k,
                                                   "keep_fraction": None})
        selection = config.filter.model_copy(update={"ifd": ifd, "selection": "threshold"})
    else:
        ifd = config.filter.ifd
        if ifd.enabled and ifd.mode == "instead_of_judge":  # the judge must rate for these selections
            ifd = ifd.model_copy(update={"mode": "before_judge"})
        selection = config.filter.model_copy(update={"selection": strategy, "top_k": k, "ifd": ifd})
    sets = []
    for name in config.evaluate.sets:
        if name != "heldout":
            sets.append(name)
        elif heldout_file is not None:
            sets.append(str(heldout_file))
    variant = config.model_copy(update={
        "filter": FilterConfig.model_validate(selection.model_dump()),
        "finetune": config.finetune.model_copy(update={"heldout_records": 0}),
        "evaluate": config.evaluate.model_copy(update={"sets": sets or [FALLBACK_SET], "compare_base": False}),
        "compress": config.compress.model_copy(update={"enabled": False}),
    })
    return variant


def heldout_file(base: RunDir, config: PipelineConfig) -> Path | None:
    """Where the common held-out prompts go (None when the config holds none out)."""
    return base.root / SELECT_DIR / HELDOUT_FILE if config.finetune.heldout_records else None


def hold_out(base: RunDir, config: PipelineConfig) -> list[dict]:
    """The pool for selection; `finetune.heldout_records` of the generated records (seeded, as the
    finetune stage splits, at least one record left in the pool) go to the common held-out file."""
    from pipeline.stages.finetune import split_heldout

    generated = read_records(base.generated, required=("instruction", "output"), optional=("input",))
    pool, heldout = split_heldout(generated, config.finetune.heldout_records, config.finetune.seed)
    target = heldout_file(base, config)
    if target is not None:
        write_jsonl(target, heldout)
    return pool


def share_pool(base: RunDir, run: RunDir, pool: list[dict]) -> None:
    """Give a strategy's run directory the pool as its generated.jsonl, with the generate stage's
    summary and rejections, so that stage counts as finished there."""
    if run.stage_summary("generate") is not None:
        return
    run.create()
    write_jsonl(run.generated, pool)
    if base.stage_rejections("generate").is_file():
        shutil.copyfile(base.stage_rejections("generate"), run.stage_rejections("generate"))
    summary = base.stage_summary("generate") or {}
    run.mark_done("generate", {**summary, "kept": len(pool), "note": "the pool of "
                               f"{base.root} less its common held-out prompts"})


def reuse_ratings(run: RunDir, variant: PipelineConfig, siblings: list[RunDir]) -> None:
    """Seed the rating journal of a strategy that is still to rate with the judge with one a
    sibling already has (the same judge, prompt and records: the same requests by content), so
    each rating is paid once."""
    from filters.registry import enabled_filters

    journal = run.journal("rate")
    if journal.exists() or run.stage_summary("filter") is not None:
        return
    if "judge" not in [step.name for step in enabled_filters(variant.filter)]:
        return
    for sibling in siblings:
        if sibling.journal("rate").is_file():
            journal.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sibling.journal("rate"), journal)
            return


def fidelity_of(entry: dict) -> dict | None:
    """A contestant's fidelity to the teacher as the evaluate summary gives it (an entry of its
    own, or inside quality or efficiency), or None when it was not measured."""
    for place in (entry, entry.get("quality") or {}, entry.get("efficiency") or {}):
        fidelity = place.get("fidelity") if isinstance(place, dict) else None
        if isinstance(fidelity, dict) and any(fidelity.get(key) is not None for key in FIDELITY_KEYS):
            return {key: fidelity.get(key) for key in FIDELITY_KEYS}
    return None


def compare_row(strategy: str, run: RunDir) -> dict:
    """One strategy's line of the comparison, read from its run directory's stage summaries."""
    filtered = run.stage_summary("filter") or {}
    finetuned = run.stage_summary("finetune") or {}
    evaluated = run.stage_summary("evaluate") or {}
    student = (evaluated.get("contestants") or {}).get("student") or {}
    diagnostics = evaluated.get("judge_diagnostics") or {}
    return {
        "strategy": strategy, "run_dir": str(run.root), "kept": filtered.get("kept"), "rated": filtered.get("rated"),
        "judge_tokens": (filtered.get("prompt_tokens") or 0) + (filtered.get("completion_tokens") or 0),
        "train_records": finetuned.get("train_records"), "train_loss": finetuned.get("train_loss"),
        "steps": finetuned.get("steps"),
        **{key: evaluated.get(key) for key in ("win_rate", "win_rate_ci95", "lc_win_rate", "wins", "ties",
                                               "losses", "invalid", "judged")},
        "judge_informative": diagnostics.get("informative"),
        "fidelity": fidelity_of(student),
        "seconds": round(sum((summary or {}).get("seconds") or 0 for summary in (filtered, finetuned, evaluated)), 2),
    }


def select_compare(config: PipelineConfig, config_path: Path, run_dir: str | Path, strategies: list[str], k: int,
                   cache_dir: Path | None = None) -> dict:
    """Generate once, then select, train and evaluate per strategy; write the comparison and the
    report. Everything that can be refused is refused before any work."""
    from pipeline.session import check_before_work
    from pipeline.stages import stage_named

    check_strategies(strategies, k)
    base = check_before_work(config, run_dir, (stage_named("generate"),))
    runs = {name: RunDir(base.root / SELECT_DIR / name) for name in strategies}
    common_heldout = heldout_file(base, config)
    variants = {name: strategy_config(config, name, k, common_heldout) for name in strategies}
    for name, run in runs.items():  # each strategy's config and run directory, before any work
        variant = variants[name]
        check_same_config(run, variant)
        for stage_name in STAGES_PER_STRATEGY:
            stage = stage_named(stage_name)
            if run.stage_summary(stage_name) is None and stage.enabled(variant):
                stage.preflight(variant)

    rows = []
    with open_session(config, config_path, base, cache_dir) as context:
        run_named_stage("generate", context)
        pool = hold_out(base, config)
        log.info("select-compare: a pool of %d records after the common held-out prompts; strategies %s at K=%d",
                 len(pool), ",".join(strategies), k)
        for position, (name, run) in enumerate(runs.items(), start=1):
            variant = variants[name]
            share_pool(base, run, pool)
            reuse_ratings(run, variant, [other for other in runs.values() if other is not run])
            log.info("select-compare [%d/%d] %s: select, train, evaluate in %s", position, len(runs), name, run.root)
            try:
                with open_session(variant, config_path, run, cache_dir, models=context.models) as strategy_context:
                    for stage_name in STAGES_PER_STRATEGY:
                        run_named_stage(stage_name, strategy_context)
                write_report(run)
                row = compare_row(name, run)
            except StageInputError as exc:  # e.g. a selection that kept nothing to train on
                log.warning("select-compare %s: %s", name, exc)
                row = {**compare_row(name, run), "error": str(exc)}
            rows.append(row)
    comparison = {
        "k": k, "strategies": strategies, "pool": len(pool),
        "heldout": None if common_heldout is None else str(common_heldout),
        "eval_sets": variants[strategies[0]].evaluate.sets,
        "judge_informative": _all_informative(rows), "fidelity_measured": any(row["fidelity"] for row in rows),
        "rows": rows,
    }
    write_json(base.root / SELECT_DIR / COMPARE_FILE, comparison)
    from pipeline.report_plots import selection_compare_png

    (base.root / SELECT_DIR / COMPARE_PLOT).write_bytes(selection_compare_png(rows, k))
    write_report(base)
    return comparison


def _all_informative(rows: list[dict]) -> bool | None:
    """False when the judge was found uninformative for any strategy, True when informative for
    all, None when the evaluate summaries do not say."""
    verdicts = [row["judge_informative"] for row in rows if row.get("judge_informative") is not None]
    return None if not verdicts else all(verdicts)

