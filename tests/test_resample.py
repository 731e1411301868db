"""Metrics under bootstrap image weights: all-ones weights reproduce metrics.json, counts weight images."""

import numpy as np
import pandas as pd
import pytest

from celadon.classify.metrics import task_metrics
from celadon.evaluate.resample import ResampledPredictions

CLASSES = ["a", "b", "c", "d", "e"]


def _frame(seed: int, n: int = 60) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(-1, 4, n)  # -1: unknown label; class "e" never occurs as truth
    predicted = np.where(rng.random(n) < 0.6, np.maximum(truth, 0), rng.integers(0, 5, n))
    frame = pd.DataFrame({"path": [f"{i}.jpg" for i in range(n)],
                          "glaze": [CLASSES[t] if t >= 0 else "" for t in truth],
                          "pred_glaze": [CLASSES[p] for p in predicted]})
    return frame, truth, predicted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unit_weights_reproduce_task_metrics(seed):
    frame, truth, predicted = _frame(seed)
    logits = np.eye(len(CLASSES))[predicted]
    counts = {"a": 10, "b": 80, "c": 5, "d": 200, "e": 1}
    expected = task_metrics(truth, logits, CLASSES, counts, minority_threshold=50)
    groups = {g: set(expected["minority_majority"][g]["classes"]) for g in ("minority", "majority")}
    scores = ResampledPredictions(frame, ["glaze"]).task_scores("glaze", np.ones((1, len(frame))), groups)
    for key in ("f1_macro", "f1_weighted", "top1"):
        assert scores[key][0] == pytest.approx(expected[key])
    for group in ("minority", "majority"):
        assert scores[group][0] == pytest.approx(expected["minority_majority"][group]["f1_mean"])


def test_a_weight_of_two_counts_an_image_twice():
    frame, truth, predicted = _frame(5, n=30)
    weights = np.ones((1, 30))
    weights[0, :10] = 2.0
    logits = np.eye(len(CLASSES))[np.concatenate([predicted, predicted[:10]])]
    expected = task_metrics(np.concatenate([truth, truth[:10]]), logits, CLASSES)
    scores = ResampledPredictions(frame, ["glaze"]).task_scores("glaze", weights)
    assert scores["f1_macro"][0] == pytest.approx(expected["f1_macro"])
    assert scores["top1"][0] == pytest.approx(expected["top1"])


def test_group_accuracy_averages_tasks_over_the_masked_images():
    frame = pd.DataFrame({"path": ["1", "2", "3", "4"], "glaze": ["a", "a", "b", ""],
                          "pred_glaze": ["a", "b", "b", "a"], "type": ["x", "y", "y", "x"],
                          "pred_type": ["x", "x", "y", "y"]})
    predictions = ResampledPredictions(frame, ["glaze", "type"])
    mask = np.array([True, True, False, True])
    # glaze on images 1, 2 (4 is unknown): 1/2; type on 1, 2, 4: 1/3; mean 5/12
    assert predictions.group_accuracy(mask, np.ones((1, 4)))[0] == pytest.approx(5 / 12)
    # weights (0, 1, 1, 0): glaze 0/1, type 0/1
    assert predictions.group_accuracy(mask, np.array([[0.0, 1.0, 1.0, 0.0]]))[0] == 0.0


def test_image_locations_agree_for_relative_paths_and_for_absolute_ones_of_a_moved_study(tmp_path):
    """A study copied elsewhere: its old evaluations hold absolute paths into the old folder, new ones paths
    relative to their own folder; both must name the same images, or no arm could be compared."""
    import json

    from celadon.evaluate.resample import image_locations

    new = tmp_path / "copy" / "stages"
    (new / "evaluate-old").mkdir(parents=True)
    (new / "evaluate-new").mkdir()
    (new / "evaluate-old" / "stage.json").write_text(json.dumps({"root": "/elsewhere/study"}))
    old = image_locations(new / "evaluate-old", ["/elsewhere/study/stages/split-1/../data-2/images/a.jpg"])
    fresh = image_locations(new / "evaluate-new", ["../split-1/../data-2/images/a.jpg"])
    assert old == fresh == [str((tmp_path / "copy" / "stages" / "data-2" / "images" / "a.jpg").resolve())]
