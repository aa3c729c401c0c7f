"""The length-controlled win rate (eval.length_control) against AlpacaEval 2's own, the
`alpaca-eval` package (a dev dependency), on the same annotations: the same numbers to 1e-3
points (AlpacaEval's scale, 0-100).

The package fetches `df_gamed.csv` (AlpacaEval's instruction difficulties and the annotations of
two gamed baselines) from the Hugging Face hub on every call; the tests run offline, so its
download function is pointed at a synthetic file of the same layout written here (a stand-in
for data that cannot be fetched: the procedure compared is the package's real code)."""

import math

import numpy as np
import pytest

from eval.length_control import glm_length_controlled, length_controlled_win_rate

GAMED_INSTRUCTIONS = 40


def gamed_rows(seed: int = 7) -> list[dict]:
    """Two baselines prompted to be verbose / concise, annotated on instructions 0..39, in the
    layout of AlpacaEval's df_gamed.csv (preference on the 0-1 scale); the first block is
    ordered by instruction, as the package reads difficulty by row position."""
    rng = np.random.default_rng(seed)
    difficulty = np.round(rng.normal(0.0, 1.0, GAMED_INSTRUCTIONS), 6)
    rows = []
    for model, sign in (("verbose_baseline", -1.0), ("concise_baseline", 1.0)):
        delta = np.round(sign * np.abs(rng.normal(1.0, 0.5, GAMED_INSTRUCTIONS)), 6)
        logit = -0.8 * np.tanh(delta) + 0.5 * difficulty + rng.normal(0, 0.5, GAMED_INSTRUCTIONS)
        preference = np.round(1 / (1 + np.exp(-logit)), 6)
        rows += [{"model": model, "index": i, "preference": preference[i], "std_delta_len": delta[i],
                  "instruction_difficulty": difficulty[i], "not_gamed_baseline": False}
                 for i in range(GAMED_INSTRUCTIONS)]
    return rows


def annotations(n: int, seed: int, kind: str) -> dict:
    """Judgments of a model (output_2) against a baseline (output_1) whose judge likes length:
    preference 2 = the model won, 1 = the baseline, 1.5 a tie (one tie written as the legacy 0),
    or continuous values in [1, 2] as AlpacaEval's weighted annotators give; NaN: no verdict."""
    rng = np.random.default_rng(seed)
    baseline = rng.integers(150, 1100, n)
    model = np.maximum(1, (baseline * rng.lognormal(0.25, 0.45, n)).astype(int))
    gap = (model - baseline) / np.std(model - baseline)
    p_model = 1 / (1 + np.exp(-(0.3 + 1.2 * np.tanh(gap))))
    if kind == "discrete":
        preference = np.where(rng.random(n) < p_model, 2.0, 1.0)
        ties = rng.random(n) < 0.2
        preference[ties] = 1.5
        if ties.any():
            preference[np.argmax(ties)] = 0.0
    elif kind == "continuous":
        preference = np.round(1 + np.clip(p_model + rng.normal(0, 0.2, n), 0, 1), 4)
    elif kind == "ties":
        preference = np.full(n, 1.5)
    else:
        raise ValueError(kind)
    if kind != "ties" and n > 10:
        preference[3] = np.nan  # one prompt without a verdict: predicted, not fitted
    return {"output_1": ["x" * int(length) for length in baseline], "output_2": ["y" * int(length) for length in model],
            "preference": preference}


def ours(data: dict, glm_name: str, gamed: list[dict]):
    """eval.length_control on the same annotations (its preferences on the 0-1 scale)."""
    preference = [math.nan if math.isnan(p) else (0.5 if p == 0 else p - 1) for p in data["preference"]]
    lengths = [len(text) for text in data["output_1"]], [len(text) for text in data["output_2"]]
    difficulty = [gamed[i]["instruction_difficulty"] for i in range(len(preference))]
    if glm_name == "length_controlled_minimal":
        return glm_length_controlled(preference, *lengths)
    regularization = ([(g["preference"], g["std_delta_len"], g["instruction_difficulty"]) for g in gamed]
                      if glm_name == "length_controlled_v1" else None)
    return glm_length_controlled(preference, *lengths, difficulty=difficulty, regularization=regularization)


CASES = [(40, 0, "discrete"), (40, 3, "continuous"), (8, 1, "ties"), (6, 2, "discrete"), (25, 5, "discrete"),
         (12, 9, "continuous")]
GLMS = ["length_controlled_minimal", "length_controlled_noreg", "length_controlled_v1"]


@pytest.mark.parametrize("n,seed,kind", CASES)
@pytest.mark.parametrize("glm_name", GLMS)
def test_same_numbers_as_the_alpaca_eval_package(n, seed, kind, glm_name, tmp_path, monkeypatch):
    glm = pytest.importorskip(
        "alpaca_eval.metrics.glm_winrate",
        reason="the alpaca-eval package is not installed (it is a dev dependency: pip install -e '.[dev]')")
    import pandas as pd

    gamed = gamed_rows()
    gamed_csv = tmp_path / "df_gamed.csv"
    pd.DataFrame(gamed).to_csv(gamed_csv, index=False)
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kwargs: str(gamed_csv))
    data = annotations(n, seed, kind)
    frame = pd.DataFrame({**data, "instruction": [f"prompt {i}" for i in range(n)],
                          "generator_1": "baseline", "generator_2": "model"})
    theirs = glm.get_length_controlled_winrate(frame, glm_name=glm_name, save_weights_dir=None, baseline=None,
                                               is_add_glm_preference_inplace=False, is_warn_extreme_changes=False)
    mine = ours(data, glm_name, gamed)
    assert mine.win_rate * 100 == pytest.approx(theirs["length_controlled_winrate"], abs=1e-3)
    assert mine.standard_error * 100 == pytest.approx(theirs["lc_standard_error"], abs=1e-3)


def test_fewer_prompts_than_folds_give_no_rate_and_say_why():
    result = length_controlled_win_rate(["win", "loss", "tie", "invalid"], [100, 200, 300, 10], [120, 150, 300, 5])
    assert result.win_rate is None and "at least 5" in result.note


def test_a_judge_that_only_rewards_length_is_levelled():
    """The student is no better than the teacher but mostly longer, and the judge prefers the
    longer answer: the plain win rate is well above one half, the length-controlled one close to it."""
    rng = np.random.default_rng(0)
    teacher = rng.integers(200, 800, 200)
    student = teacher + rng.integers(-150, 450, 200)
    gap = (student - teacher) / np.std(student - teacher)
    outcomes = ["win" if u < 1 / (1 + np.exp(-3 * np.tanh(g))) else "loss" for u, g in zip(rng.random(200), gap)]
    plain = outcomes.count("win") / len(outcomes)
    result = length_controlled_win_rate(outcomes, student, teacher)
    assert plain > 0.65 and result.coefficients["length"] < 0  # d = teacher - student: a longer student wins
    assert abs(result.win_rate - 0.5) < 0.06 < plain - 0.5


def test_equal_lengths_leave_the_model_term_alone():
    result = length_controlled_win_rate(["win"] * 8 + ["loss"] * 2, [100] * 10, [100] * 10)
    assert result.coefficients["length"] == 0.0 and "no length term" in result.note
    assert 0.5 < result.win_rate <= 0.8
