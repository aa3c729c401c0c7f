import json

import pytest

from eval.sets import load_eval_set


def test_builtin_sets(tmp_path):
    vicuna = load_eval_set("vicuna_80", tmp_path / "none")
    assert len(vicuna) == 80 and vicuna[0]["instruction"].startswith("How can I improve my time management")
    user = load_eval_set("self_instruct_252", tmp_path / "none")
    assert len(user) == 252 and user[0]["input"] and all(item["set"] == "self_instruct_252" for item in user)
    assert len({item["id"] for item in user}) == 252


def test_heldout_and_user_files(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"id": "gen-1", "instruction": "Name a prime.", "input": "", "output": "7"}) + "\n")
    assert load_eval_set("heldout", heldout) == [{"id": "gen-1", "instruction": "Name a prime.", "input": "", "set": "heldout"}]
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"instruction": "Say hi."}\n{"instruction": 5}\n')
    with pytest.raises(ValueError, match=r"mine\.jsonl:2: field 'instruction' must be a string"):
        load_eval_set(str(mine), heldout)
