"""The `distill` command: the whole pipeline as one Prefect flow, or one stage at a time."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path


# Prefect reads these when it is imported: no telemetry, and our own loggers in its logs.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The ephemeral API server starts in ~15 s on 2 cores; a busy machine needs longer than 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
OUR_LOGGERS = ("backends", "selfinstruct", "filters", "finetune", "compress", "eval", "student", "similarity",
               "pipeline", "flows", "distill")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", ",".join(OUR_LOGGERS))
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXIT_BAD_INPUT = 2
EXIT_ENDPOINT_FAILED = 3  # a model endpoint could not answer; rerun once it is fixed to resume


def _add_config_args(parser: argparse.ArgumentParser, run_dir_required: bool) -> None:
    parser.add_argument("config", type=Path, help="pipeline config (YAML), e.g. configs/demo.yaml")
    parser.add_argument("--run-dir", type=Path, required=run_dir_required,
                        help="run directory (default for `run`: runs/<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set generate.target_records=20 (repeatable)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the dequantized embedded student is kept (default ~/.cache/distill)")


def _stage_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run every stage as one Prefect flow")
    _add_config_args(run, False)
    run.add_argument("--stages", type=_stage_list, default=None, metavar="A,B",
                     help="run only these stages, e.g. generate,filter (default: all)")
    serve = commands.add_parser("serve", help="serve the flow as a Prefect deployment, on a schedule or on demand")
    serve.add_argument("config", type=Path, help="pipeline config (YAML), e.g. configs/demo.yaml")
    when = serve.add_mutually_exclusive_group()
    when.add_argument("--cron", help='cron schedule, e.g. "0 3 * * *" (default: runs on demand only)')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every this many seconds")
    serve.add_argument("--name", help="deployment name (default: the config's name)")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key for every run of the deployment (repeatable)")
    serve.add_argument("--stages", type=_stage_list, default=None, metavar="A,B",
                       help="run only these stages, e.g. generate,filter (default: all)")
    serve.add_argument("--runs-root", type=Path, default=Path("runs"),
                       help="each flow run writes to RUNS_ROOT/<config name>/<flow run name>-<id> (default: runs)")
    serve.add_argument("--limit", type=int, default=None, help="most runs of this deployment at once")
    serve.add_argument("--cache-dir", type=Path, default=None,
                       help="where the dequantized embedded student is kept (default ~/.cache/distill)")
    from pipeline.stages import STAGES

    for stage in STAGES:
        _add_config_args(commands.add_parser(stage.name, help=stage.description), True)
    dedup = commands.add_parser("dedup", help="greedy ROUGE-L near-duplicate removal")
    dedup.add_argument("input", type=Path, help="records (JSONL or a JSON list) with an 'instruction' field")
    dedup.add_argument("-o", "--output", type=Path, required=True)
    dedup.add_argument("--seeds", type=Path, help="seed tasks JSONL, or records with 'instruction'")
    dedup.add_argument("--threshold", type=float, default=0.7)
    dedup.add_argument("--rejected", type=Path, help="write the dropped records here, with their nearest match")
    decontaminate = commands.add_parser("decontaminate", help="drop records that copy an evaluation prompt")
    decontaminate.add_argument("input", type=Path, help="records (JSONL or a JSON list) with 'instruction' (and 'input')")
    decontaminate.add_argument("--against", type=_stage_list, required=True, metavar="SET[,SET...]",
                               help="shipped sets (vicuna_80, self_instruct_252) or JSONL files of prompts")
    decontaminate.add_argument("-o", "--output", type=Path, required=True, help="the kept records (JSONL)")
    decontaminate.add_argument("--rejected", type=Path, help="the dropped records, each with the prompt it matched")
    decontaminate.add_argument("--ngram", type=int, default=13, help="words in a run that makes a copy (13)")
    decontaminate.add_argument("--min-words", type=int, default=6, help="shortest prompt matched whole (6)")
    decontaminate.add_argument("--threshold", type=float, default=0.7, help="ROUGE-L F above which a record is a copy")
    export = commands.add_parser("export", help="write records as Alpaca JSON, chat JSONL or a datasets folder")
    export.add_argument("input", type=Path, help="records (JSONL or a JSON list), e.g. a run's filtered.jsonl")
    export.add_argument("--format", choices=("alpaca", "chat", "hf"), required=True)
    export.add_argument("-o", "--output", type=Path, required=True)
    export.add_argument("--system-prompt", default=None, help="system turn for the chat format")
    gguf = commands.add_parser("export-gguf", help="write a merged Hugging Face model as a GGUF file for llama.cpp")
    gguf.add_argument("model_dir", type=Path, help="model directory (config.json, safetensors, tokenizer), "
                      "e.g. a run's finetune/merged or compress/merged")
    gguf.add_argument("-o", "--output", type=Path, required=True, help="GGUF file to write")
    gguf.add_argument("--type", dest="gguf_type", choices=("f16", "q8_0", "q4_0", "q4_k_m"), default="f16",
                      help="f16 (as the model answers), or quantized by llama.cpp (default: f16)")
    gguf.add_argument("--threads", type=int, default=1, help="threads for llama.cpp's quantizer")
    compare = commands.add_parser(
        "select-compare", help="one generated pool selected by each strategy at budget K; a student trained and "
        "evaluated on each; a table and a plot in the report")
    _add_config_args(compare, False)
    compare.add_argument("--strategies", type=_stage_list, required=True, metavar="A,B",
                         help="selection strategies: top_k, longest_k, random_k, complexity_quality, ifd")
    compare.add_argument("--k", type=int, required=True, help="the budget: records each strategy keeps")
    report = commands.add_parser("report", help="rebuild report.json and report.md of a run directory")
    report.add_argument("--run-dir", type=Path, required=True)
    estimate = commands.add_parser("estimate", help="requests, tokens, cost (online and Batch API) and time "
                                   "of every stage that asks a model, before a run")
    estimate.add_argument("config", type=Path, help="pipeline config (YAML), e.g. configs/alpaca.yaml")
    estimate.add_argument("--pilot", type=int, default=0, metavar="N",
                          help="measure reply length, yield and latency with N real requests per stage (paid; "
                               "default: the config's estimate section, no request sent)")
    estimate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a config key (repeatable)")
    estimate.add_argument("--json", type=Path, default=None, help="also write the estimate to this file")
    return parser


def _run_stage(args) -> None:
    """One stage by name, in the run directory (run even when it finished before)."""
    from core.rundir import RunDir
    from pipeline.config import load_config
    from pipeline.report import write_report
    from pipeline.session import check_endpoints, check_same_config, open_session, run_named_stage
    from pipeline.stages import stage_named

    config = load_config(args.config, args.overrides)
    rundir = RunDir(args.run_dir)
    check_same_config(rundir, config)
    stage = stage_named(args.command)
    stage.preflight(config)  # bad input and bad endpoint settings: named before anything is written
    check_endpoints(stage, config, network=False)
    with open_session(config, args.config, rundir, args.cache_dir) as context:
        summary = run_named_stage(args.command, context, skip_finished=False)
    write_report(rundir)
    shown = summary.to_json() if summary is not None else "not enabled in the config"
    logging.getLogger("distill").info("%s done: %s", args.command, shown)


def _run_dedup(args) -> None:
    from core.records import RecordError, read_records, read_seed_tasks, write_jsonl
    from similarity.rouge import rouge_l_dedup

    records = read_records(args.input, required=("instruction",), optional=())
    seeds: list[str] = []
    if args.seeds:
        try:
            seeds = [s["instruction"] for s in read_seed_tasks(args.seeds)]
        except RecordError:
            seeds = [s["instruction"] for s in read_records(args.seeds, required=("instruction",), optional=())]
    if not 0 <= args.threshold <= 1:
        raise ValueError(f"--threshold must be between 0 and 1, got {args.threshold}")
    decisions = rouge_l_dedup([r["instruction"] for r in records], seeds, args.threshold)
    kept = [r for r, d in zip(records, decisions) if d.kept]
    write_jsonl(args.output, kept)
    if args.rejected:
        write_jsonl(args.rejected, [{**r, "nearest": d.nearest, "rouge_l": d.score}
                                    for r, d in zip(records, decisions) if not d.kept])
    print(f"kept {len(kept)} of {len(records)} records -> {args.output}")


def _run_decontaminate(args) -> None:
    from core.records import read_records, write_jsonl
    from eval.contamination import decontaminator, prompts_by_set, split_contaminated

    if not 0 < args.threshold <= 1:
        raise ValueError(f"--threshold must be above 0 and at most 1, got {args.threshold}")
    records = read_records(args.input, required=("instruction",), optional=("input",))
    by_set = prompts_by_set(args.against, skip_heldout=False)
    kept, dropped, per_set = split_contaminated(records, decontaminator(by_set, args.ngram, args.min_words,
                                                                        args.threshold))
    write_jsonl(args.output, kept)
    if args.rejected:
        write_jsonl(args.rejected, dropped)
    print(f"kept {len(kept)} of {len(records)} records -> {args.output}; dropped per set: "
          + ", ".join(f"{name} {count}" for name, count in per_set.items()))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in OUR_LOGGERS:  # progress lines are INFO; Prefect leaves extra loggers at WARNING
        logging.getLogger(name).setLevel(logging.INFO)
    # A plain `kill` unwinds like Ctrl-C, so the embedded server is stopped and files closed.
    signal.signal(signal.SIGTERM, _interrupt)
    from core.errors import ConfigError, EndpointError, StageFailed, StageInputError
    from core.records import RecordError
    from core.rundir import RunDirBusy

    try:
        if args.command == "run":
            from pipeline.config import load_config
            from pipeline.session import check_before_work, stages_to_run

            # Bad input stops here, before Prefect starts or anything is written.
            check_before_work(load_config(args.config, args.overrides), args.run_dir, stages_to_run(args.stages))
            from flows.pipeline import distill_pipeline

            report = distill_pipeline(str(args.config), str(args.run_dir) if args.run_dir else None,
                                      args.overrides, str(args.cache_dir) if args.cache_dir else None,
                                      stages=args.stages)
            from pipeline.report import headline

            print(f"\nReport: {Path(report['run_dir']) / 'report.md'}\n{headline(report)}")
        elif args.command == "serve":
            from flows.serve import serve_pipeline

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            serve_pipeline(args.config, args.overrides, args.name, args.cron, args.interval, args.runs_root,
                           args.stages, args.cache_dir, args.limit)
        elif args.command == "select-compare":
            from pipeline.config import load_config
            from pipeline.select_compare import select_compare
            from pipeline.session import default_run_dir

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            config = load_config(args.config, args.overrides)
            run_dir = args.run_dir or default_run_dir(config)
            comparison = select_compare(config, args.config, run_dir, args.strategies, args.k, args.cache_dir)
            print(f"\nReport: {Path(run_dir).resolve() / 'report.md'}")
            for row in comparison["rows"]:
                print(f"{row['strategy']}: kept {row['kept']}, win rate {row.get('win_rate')}, "
                      f"fidelity {row['fidelity'] or 'not measured'}" + (f" ({row['error']})" if row.get("error") else ""))
        elif args.command == "dedup":
            _run_dedup(args)
        elif args.command == "decontaminate":
            _run_decontaminate(args)
        elif args.command == "export":
            from core.records import read_records
            from finetune.export import export_records

            records = read_records(args.input, required=("instruction", "output"), optional=("input",))
            count = export_records(records, args.format, args.output, system_prompt=args.system_prompt)
            print(f"wrote {count} records -> {args.output}")
        elif args.command == "export-gguf":
            from compress.gguf_export import write_gguf

            path = write_gguf(args.model_dir, args.output, args.gguf_type, threads=args.threads)
            print(f"wrote {path} ({args.gguf_type}, {path.stat().st_size / 1e6:.1f} MB)")
        elif args.command == "estimate":
            from pipeline.config import load_config
            from pipeline.estimate import estimate_run, render_estimate

            logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
            result = estimate_run(load_config(args.config, args.overrides), pilot=args.pilot)
            if args.json:
                from core.records import write_json

                write_json(args.json, result)
            print(render_estimate(result))
        elif args.command == "report":
            from core.rundir import RunDir
            from pipeline.report import headline, write_report

            print(headline(write_report(RunDir(args.run_dir))))
        else:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            _run_stage(args)
    except (ConfigError, RecordError, StageInputError, RunDirBusy, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (EndpointError, StageFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENDPOINT_FAILED
    except KeyboardInterrupt:
        print("interrupted: finished work is kept in the run directory; rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
