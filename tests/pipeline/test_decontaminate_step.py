"""The decontamination step of the filter stage, on a real run directory with a real judge
server (llm-katan in echo mode, as in test_filter_stage.py: it answers with the rating prompt,
so a score planted in each output is what it "rates"): copies of evaluation prompts are dropped
first, named in rejected.jsonl, counted per set in the summary and the report, never rated."""

import json

from core.records import iter_jsonl
from eval.config import EvaluateConfig
from eval.sets import EVAL_SETS
from pipeline.report import write_report
from test_filter_stage import alpaca, make_config, planted, run_filter


def test_copies_of_evaluation_prompts_are_dropped_before_rating(katan, tmp_path):
    url = katan()
    vicuna = EVAL_SETS["vicuna_80"].prompts()
    records = planted(alpaca(12))
    copies = [{"id": "copy-0", "instruction": vicuna[2]["instruction"].lower().rstrip("?"), "input": "",
               "output": "copied\n" + json.dumps({"score": 5})},
              {"id": "copy-1", "instruction": "Quick question! " + vicuna[40]["instruction"], "input": "",
               "output": "copied\n" + json.dumps({"score": 5})}]
    mixed = records[:5] + copies[:1] + records[5:] + copies[1:]
    config = make_config(url, selection="threshold", threshold=4.0)
    config = config.model_copy(update={"evaluate": EvaluateConfig(sets=["heldout", "vicuna_80"])})
    rundir, summary = run_filter(config, tmp_path / "run", mixed)

    assert summary["filters"][0] == "decontaminate" and summary["dropped"]["contaminated"] == 2
    assert summary["decontamination"]["against"] == ["vicuna_80"]  # heldout: drawn from these records later
    assert summary["decontamination"]["dropped_per_set"] == {"vicuna_80": 2}
    assert summary["input"] == 14 and summary["after_dedup"] == 12
    assert not {"copy-0", "copy-1"} & {r["id"] for _, r in iter_jsonl(rundir.rated)}  # never rated
    kept_ids = [r["id"] for _, r in iter_jsonl(rundir.filtered)]
    assert not {"copy-0", "copy-1"} & set(kept_ids)
    dropped = [r for _, r in iter_jsonl(rundir.rejected) if r["reason"] == "contaminated"]
    assert [(d["id"], d["matched_prompt_id"]) for d in dropped] == [("copy-0", vicuna[2]["id"]),
                                                                     ("copy-1", vicuna[40]["id"])]
    assert dropped[1]["matched_prompt"] == vicuna[40]["instruction"] and dropped[1]["record"]["output"].startswith("copied")

    write_report(rundir)
    markdown = rundir.report_md.read_text(encoding="utf-8")
    assert "| contaminated | 2 |" in markdown and "dropped: vicuna_80 2." in markdown


def test_the_sets_to_check_can_be_named_and_the_step_switched_off(katan, tmp_path):
    url = katan()
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"instruction": "Write a limerick about a cat who learns to play the cello at night."})
                    + "\n")
    records = planted(alpaca(4)) + [{"id": "copy", "instruction": "Write a limerick about a cat who learns to play "
                                     "the cello at night, please.", "input": "", "output": "x"}]
    config = make_config(url, selection="threshold", threshold=4.0, decontaminate={"against": [str(mine)]})
    _, summary = run_filter(config, tmp_path / "named", records)
    assert summary["decontamination"]["dropped_per_set"] == {"mine": 1}

    off = make_config(url, selection="threshold", threshold=4.0, decontaminate={"enabled": False})
    _, summary = run_filter(off, tmp_path / "off", records)
    assert "decontaminate" not in summary["filters"] and summary["decontamination"] is None
