"""The length-controlled win rate as AlpacaEval 2 computes it, reproduced on the project's own
judgments (checked against the `alpaca-eval` package on the same annotations in
tests/eval/test_length_control.py: the same numbers to 1e-3 points).

A judge that likes long answers rewards a model for talking more. AlpacaEval 2 (Dubois et al.,
"Length-Controlled AlpacaEval", 2024) fits a logistic model of the judge's preference and
reads it off where the two answers are equally long.

The model, per judged prompt i (no intercept)::

    logit P(model preferred) = b_len * tanh(d_i / s) + b_diff * difficulty_i + b_model * 1

* ``d_i`` = length of the baseline's answer - length of the model's, in characters; ``s`` is
  the sample standard deviation of the ``d_i`` (ddof 1, not centred), over every prompt
  (also those whose verdict is missing).
* ``difficulty_i``: how hard prompt i is for every model, a number AlpacaEval precomputed for
  its own 805 instructions only. Without it (``difficulty=None``, AlpacaEval's
  ``length_controlled_minimal``) the term is left out: every prompt counts as equally hard.
* ``b_model`` is the model's quality; its feature is 1 on the model's rows.
* The target is the judge's preference ``p_i`` in [0, 1] (1: the model's answer preferred,
  0: the baseline's, 0.5: a tie); prompts without one are left out of the fit.
* Optionally (AlpacaEval's ``length_controlled_v1``), ``regularization`` rows join the fit
  before the model's rows: annotations of baselines prompted to be verbose or concise, with
  their own length feature, difficulty and preference, model feature 0 and sample weight
  ``regularization_weight / 2``. They pin the length slope to what a pure length change does.

The fit minimises ``||b||_1 + C * sum_i w_i * CE(p_i, sigmoid(x_i . b))`` (an L1-penalised
logistic regression on soft targets; each row enters twice, as label 1 with weight
``p_i * w_i`` and label 0 with weight ``(1 - p_i) * w_i``), by scikit-learn's
``LogisticRegressionCV`` with the liblinear solver (no intercept, tol 1e-4, random state 123):
C is chosen among ``logspace(-4, 4, 10)`` by 5-fold cross-validation (scikit-learn's
``GroupKFold``, the two copies of a row in one fold), scoring the test folds by their mean
weighted cross-entropy (predictions clipped to [1e-15, 1 - 1e-15]); the best total score wins,
the smallest C on ties, and the model is refitted on every row with it. (Another optimiser of
the same objective lands 6e-4 to 0.04 points away; liblinear is what matches.)

The length-controlled win rate is the mean over every prompt of
``sigmoid(b_diff * difficulty_i + b_model)`` (the prediction at d = 0), its standard error the
sample standard error of those predictions. Both are fractions here (0.5 = as good as the
baseline); AlpacaEval prints them times 100.

Where this differs from the package, on purpose: with fewer fitted rows than folds it returns
no rate and says why (the package raises, or for ``length_controlled_v1`` fits the gamed rows
alone); when every length difference is the same (``s`` is 0) the length feature is 0 (the
package's fit fails with NaN), so the rate is the fit of the model term alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

N_SPLITS = 5
N_CS = 10  # C in logspace(-4, 4, 10), scikit-learn's default grid
RANDOM_STATE = 123
CLIP = 1e-15
OUTCOME_PREFERENCE = {"win": 1.0, "tie": 0.5, "loss": 0.0}  # the student's side, invalid: no preference
METHOD = ("AlpacaEval 2's length-controlled GLM (tanh of the standardized character-length difference and a "
          "model term, L1-regularized logistic regression, C by 5-fold CV, read at zero length difference); "
          "no instruction difficulty for these prompt sets (AlpacaEval's length_controlled_minimal)")


@dataclass(frozen=True)
class LengthControlled:
    """A length-controlled win rate (a fraction), its standard error, the fitted coefficients,
    the C chosen, and why there is no rate when there is none."""

    win_rate: float | None
    standard_error: float | None
    coefficients: dict[str, float] = field(default_factory=dict)
    c: float | None = None
    fitted_rows: int = 0
    note: str | None = None


def _mean_weighted_log_likelihood(y_true, predicted, target, row_weight=None) -> float:
    """The CV score of one test fold: minus the mean weighted cross-entropy between the soft
    targets and the predicted probabilities (higher is better). `y_true` holds the duplicated 0/1
    labels, unused: every copy of a row carries the row's own target, so both copies score the same."""
    predicted = np.clip(predicted, CLIP, 1 - CLIP)
    log_likelihood = target * np.log(predicted) + (1 - target) * np.log(1 - predicted)
    if row_weight is not None:
        log_likelihood = log_likelihood * row_weight
    return float(np.mean(log_likelihood))


def _fit(features: np.ndarray, targets: np.ndarray, weights: np.ndarray | None, n_splits: int):
    """The cross-validated L1 logistic fit on soft targets; returns (coefficients, C)."""
    import warnings

    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    rows = len(targets)
    doubled = np.vstack([features, features])
    labels = np.concatenate([np.ones(rows, dtype=int), np.zeros(rows, dtype=int)])
    groups = np.concatenate([np.arange(rows), np.arange(rows)])
    scale = np.ones(rows) if weights is None else weights
    fit_weight = np.concatenate([targets * scale, (1 - targets) * scale])
    score_params = {"target": np.concatenate([targets, targets])}
    if weights is not None:
        score_params["row_weight"] = np.concatenate([weights, weights])
    # The scorer needs each test row's soft target and weight: scikit-learn hands them over
    # through metadata routing, switched on for this fit only.
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        # liblinear stops at its iteration limit for the weakest penalties of the grid, as in
        # the package; the cross-validation then scores those fits as they are.
        warnings.simplefilter("ignore", ConvergenceWarning)
        scorer = make_scorer(_mean_weighted_log_likelihood, response_method="predict_proba").set_score_request(
            target=True, row_weight=True)
        model = LogisticRegressionCV(Cs=N_CS, l1_ratios=(1.0,), solver="liblinear", fit_intercept=False,
                                     cv=list(GroupKFold(n_splits=n_splits).split(doubled, labels, groups)),
                                     tol=1e-4, random_state=RANDOM_STATE, scoring=scorer,
                                     use_legacy_attributes=False).set_fit_request(sample_weight=True)
        model.fit(doubled, labels, sample_weight=fit_weight, **score_params)
    return model.coef_[0], float(np.ravel(model.C_)[0])


def glm_length_controlled(preferences: Sequence[float], baseline_lengths: Sequence[float],
                          model_lengths: Sequence[float], difficulty: Sequence[float] | None = None,
                          regularization: Sequence[tuple[float, float, float]] | None = None,
                          regularization_weight: float = 0.2, n_splits: int = N_SPLITS) -> LengthControlled:
    """AlpacaEval 2's length-controlled win rate of a model against a baseline (module docstring).

    ``preferences``: per prompt, the judge's preference for the model in [0, 1], NaN (or None)
    when there is none. ``baseline_lengths`` / ``model_lengths``: the two answers' lengths in
    characters. ``difficulty``: per prompt, or None for the minimal model. ``regularization``:
    rows ``(preference, standardized length difference, difficulty)`` of gamed baselines
    (needs ``difficulty``), weighted ``regularization_weight / 2`` each.
    """
    p = np.array([math.nan if value is None else float(value) for value in preferences], dtype=float)
    if not (len(p) == len(baseline_lengths) == len(model_lengths)):
        raise ValueError("preferences, baseline_lengths and model_lengths must have one value per prompt")
    if difficulty is None and regularization:
        raise ValueError("regularization rows need a difficulty per prompt")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("preferences must lie in [0, 1] (1: the model's answer preferred)")
    if not len(p):
        return LengthControlled(None, None, note="no prompts")
    delta = np.asarray(baseline_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    scale = float(np.std(delta, ddof=1)) if len(delta) > 1 else math.nan
    length_feature = np.tanh(delta / scale) if math.isfinite(scale) and scale > 0 else np.zeros_like(delta)
    columns = [length_feature] + ([np.asarray(difficulty, dtype=float)] if difficulty is not None else [])
    names = ["length"] + (["difficulty"] if difficulty is not None else []) + ["model"]
    features = np.column_stack(columns + [np.ones_like(delta)])
    judged = ~np.isnan(p)
    train_x, train_p, weights = features[judged], p[judged], None
    if regularization:
        gamed = np.asarray(regularization, dtype=float)
        gamed_x = np.column_stack([np.tanh(gamed[:, 1]), gamed[:, 2], np.zeros(len(gamed))])
        train_x, train_p = np.vstack([gamed_x, train_x]), np.concatenate([gamed[:, 0], train_p])
        weights = np.concatenate([np.full(len(gamed), regularization_weight / 2), np.ones(int(judged.sum()))])
    if len(train_p) < n_splits:
        return LengthControlled(None, None, fitted_rows=len(train_p),
                                note=f"{int(judged.sum())} judged prompts: the fit's {n_splits}-fold "
                                     f"cross-validation needs at least {n_splits}")
    coefficients, c = _fit(train_x, train_p, weights, n_splits)
    at_equal_length = features.copy()
    at_equal_length[:, 0] = 0.0
    predicted = 1.0 / (1.0 + np.exp(-(at_equal_length @ coefficients)))
    error = float(np.std(predicted, ddof=1) / math.sqrt(len(predicted))) if len(predicted) > 1 else None
    return LengthControlled(float(np.mean(predicted)), error, dict(zip(names, map(float, coefficients))), c,
                            len(train_p), None if scale > 0 else "every length difference is the same: "
                            "no length term")


def length_controlled_win_rate(outcomes: Sequence[str], student_lengths: Sequence[int],
                               teacher_lengths: Sequence[int]) -> LengthControlled:
    """The student's length-controlled win rate against the teacher (the baseline) from the
    judge's combined outcomes (win / tie / loss from the student's side; invalid: none) and the
    two answers' lengths in characters; no instruction difficulty (module docstring)."""
    preferences = [OUTCOME_PREFERENCE.get(outcome, math.nan) for outcome in outcomes]
    return glm_length_controlled(preferences, teacher_lengths, student_lengths)
