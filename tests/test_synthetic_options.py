"""How a training step treats its synthetic rows: label smoothing, loss weight, separate BatchNorm statistics,
and the study's per-arm settings and development (validation) endpoint."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from celadon.classify.data import MISSING
from celadon.classify.loss import multitask_loss, row_cross_entropy
from celadon.classify.models import ModelConfig, MultiTaskNet
from celadon.classify.predict import load_model
from celadon.classify.synthetic import DomainBatchNorm, separate_batchnorm, synthetic_rows
from celadon.classify.train import Trainer, train
from celadon.errors import CeladonError
from celadon.experiment.config import load_study
from conftest import noise_image, tiny_config


def test_row_smoothing_is_torchs_label_smoothing_per_row():
    torch.manual_seed(0)
    logits, weights = torch.randn(6, 4), torch.tensor([1.0, 2.0, 0.5, 3.0])
    targets = torch.tensor([0, 3, MISSING, 1, 2, 2])
    for amount in (0.0, 0.2):
        expected = F.cross_entropy(logits, targets, weight=weights, ignore_index=MISSING, reduction="none",
                                   label_smoothing=amount)
        got = row_cross_entropy(logits, targets, weights, torch.full((6,), amount), MISSING)
        assert torch.allclose(got, expected, atol=1e-6)
    mixed = row_cross_entropy(logits, targets, weights, torch.tensor([0.0, 0.2, 0.2, 0.0, 0.0, 0.2]), MISSING)
    hard = F.cross_entropy(logits, targets, weight=weights, ignore_index=MISSING, reduction="none")
    soft = F.cross_entropy(logits, targets, weight=weights, ignore_index=MISSING, reduction="none",
                           label_smoothing=0.2)
    assert torch.allclose(mixed, torch.where(torch.tensor([0, 1, 1, 0, 0, 1]).bool(), soft, hard), atol=1e-6)
    assert mixed[2] == 0  # an unknown label adds nothing


def test_row_weights_scale_a_rows_loss_and_keep_the_labelled_denominator():
    torch.manual_seed(1)
    logits = {"glaze": torch.randn(4, 3)}
    targets = torch.tensor([[0], [1], [2], [MISSING]])
    weights = {"glaze": torch.ones(3)}
    full, _ = multitask_loss(logits, targets, ["glaze"], weights, {})
    ce = F.cross_entropy(logits["glaze"], targets[:, 0], ignore_index=MISSING, reduction="none")
    halved, _ = multitask_loss(logits, targets, ["glaze"], weights, {}, row_weights=torch.tensor([1.0, 1.0, 0.5, 0.5]))
    assert torch.isclose(full, ce[:3].sum() / 3)
    assert torch.isclose(halved, (ce[0] + ce[1] + 0.5 * ce[2]) / 3)  # still over the 3 labelled rows


@pytest.mark.parametrize("kind", ["torch", "timm"])  # EfficientNet-Lite0's are timm's BatchNormAct2d
def test_separate_batchnorm_normalises_synthetic_rows_apart_and_learns_running_stats_from_real_rows_only(kind):
    from timm.layers.norm_act import BatchNormAct2d

    torch.manual_seed(2)
    make = (lambda: nn.BatchNorm2d(3)) if kind == "torch" else (lambda: BatchNormAct2d(3, apply_act=False))
    plain, domain = make(), make()
    with torch.no_grad():
        for bn in (plain, domain):
            bn.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
            bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    [layer] = separate_batchnorm(domain)
    assert layer is domain and isinstance(domain, DomainBatchNorm) and isinstance(domain, type(plain))
    x = torch.randn(10, 3, 4, 4)
    x[7:] = x[7:] * 5 + 3  # synthetic rows from another distribution
    mask = torch.zeros(10, dtype=torch.bool)
    mask[7:] = True
    with synthetic_rows([layer], mask):
        out = domain(x)
    assert torch.allclose(out[:7], plain(x[:7]), atol=1e-5)  # the real rows as BatchNorm on them alone
    assert torch.allclose(domain.running_mean, plain.running_mean) and torch.allclose(domain.running_var,
                                                                                          plain.running_var)
    alone = (out[7:] - domain.bias.view(1, 3, 1, 1)) / domain.weight.view(1, 3, 1, 1)
    assert torch.allclose(alone.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)  # by their own statistics
    assert torch.allclose(alone.var((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    out.sum().backward()  # gradients reach the shared affine weights from both kinds of rows
    assert domain.weight.grad is not None
    domain.eval()
    with synthetic_rows([layer], mask):  # evaluation: every row by the running statistics
        assert torch.allclose(domain(x), plain.eval()(x), atol=1e-5)
    assert layer.synthetic is None  # the mask lasts one batch
    domain.train()
    before = domain.running_mean.clone()
    point, one = torch.randn(6, 3, 1, 1), torch.tensor([False] * 5 + [True])
    with synthetic_rows([layer], one):  # one synthetic value per channel: no statistics of its own
        out = domain(point)
    assert torch.equal(domain.running_mean, before)  # nothing moved
    assert torch.allclose(out, F.batch_norm(point, None, None, domain.weight, domain.bias, True, 0.0, domain.eps))


def test_a_model_trained_with_separate_batchnorm_loads_as_the_plain_network():
    model = MultiTaskNet(ModelConfig("efficientnet_lite0", "none", {"glaze": 3}))
    keys = set(model.state_dict())
    layers = separate_batchnorm(model)
    assert len(layers) > 10 and set(model.state_dict()) == keys


@pytest.fixture
def synthetic_table(tmp_path):
    rows = []
    for i in range(4):
        noise_image(400 + i, 40).save(tmp_path / f"syn{i}.jpg")
        rows.append({"path": f"syn{i}.jpg", "dynasty": "song", "kiln": "ru", "glaze": "celadon", "type": "vase"})
    pd.DataFrame(rows).to_csv(tmp_path / "synthetic.csv", index=False)
    return str(tmp_path / "synthetic.csv")


def test_the_trainer_tells_synthetic_rows_apart_in_every_batch_and_keeps_the_budget(tiny_splits, tmp_path,
                                                                                     synthetic_table, monkeypatch):
    """The options change how synthetic rows train, never which rows are drawn: the same draws and steps."""
    import celadon.classify.train as train_module

    seen = []

    def spy(logits, targets, tasks, class_weights, task_weights, smoothing=None, row_weights=None):
        seen.append((smoothing.clone(), row_weights.clone()))
        return multitask_loss(logits, targets, tasks, class_weights, task_weights, smoothing, row_weights)

    monkeypatch.setattr(train_module, "multitask_loss", spy)
    common = dict(synthetic=synthetic_table, synthetic_ratio=0.25, epochs=2, max_steps_per_epoch=0, patience=5,
                  augment_on="device")  # the demo's batch path
    options = dict(synthetic_smoothing=0.2, synthetic_weight=0.5, synthetic_batchnorm="separate")
    trainer = Trainer(tiny_config(tiny_splits, tmp_path / "options", **common, **options), progress=False)
    state = trainer.fit()
    flags = np.concatenate([(w < 1).all(1).numpy() for _, w in seen])  # (row, task) weights, 0.5 on synthetic
    assert flags.sum() == state["budget"]["synthetic_presentations"] > 0
    assert all(torch.equal(s > 0, (w < 1).all(1)) and torch.equal(s > 0, (w < 1).any(1)) for s, w in seen)
    assert sorted({round(float(v), 6) for s, _ in seen for v in s}) == [0.0, 0.2]
    monkeypatch.undo()
    plain = train(tiny_config(tiny_splits, tmp_path / "plain", **common), progress=False)
    assert {k: v for k, v in plain["budget"].items()} == state["budget"]  # same draws, steps and labels
    loaded = load_model(tmp_path / "options")  # the plain network, as evaluation loads it
    assert not any(isinstance(m, DomainBatchNorm) for m in loaded.model.modules())


def test_judge_confidence_weighs_each_synthetic_label_and_needs_the_judges_columns(tiny_splits, tmp_path,
                                                                                   synthetic_table, monkeypatch):
    import celadon.classify.train as train_module

    table = pd.read_csv(synthetic_table)
    table["judge_p_glaze"] = [0.9, 0.1, None, 0.5]  # no reading: weight 1
    table.to_csv(tmp_path / "judged.csv", index=False)
    seen = []

    def spy(logits, targets, tasks, class_weights, task_weights, smoothing=None, row_weights=None):
        seen.append(row_weights.clone())
        return multitask_loss(logits, targets, tasks, class_weights, task_weights, smoothing, row_weights)

    monkeypatch.setattr(train_module, "multitask_loss", spy)
    trainer = Trainer(tiny_config(tiny_splits, tmp_path / "judged", synthetic=str(tmp_path / "judged.csv"),
                                  synthetic_ratio=0.25, synthetic_confidence=True, synthetic_weight=0.5),
                      progress=False)
    glaze = trainer.tasks.index("glaze")
    assert trainer.samples.label_weights[trainer.n_real:, glaze].tolist() == pytest.approx([0.9, 0.1, 1.0, 0.5])
    trainer.fit()
    weights = torch.cat(seen)
    assert sorted({round(float(v), 4) for v in weights[:, glaze]}) == [0.05, 0.25, 0.45, 0.5, 1.0]  # x 0.5
    others = [j for j in range(len(trainer.tasks)) if j != glaze]
    assert sorted({round(float(v), 4) for v in weights[:, others].flatten()}) == [0.5, 1.0]
    with pytest.raises(CeladonError, match="synthetic.csv: no judge_p_<task> column"):
        Trainer(tiny_config(tiny_splits, tmp_path / "unjudged", synthetic=synthetic_table, synthetic_ratio=0.25,
                            synthetic_confidence=True), progress=False)


def test_bad_synthetic_options_are_one_line_errors(tiny_splits, tmp_path):
    for bad, words in (({"synthetic_smoothing": 1.0}, "synthetic_smoothing"), ({"synthetic_weight": -1.0},
                       "synthetic_weight"), ({"synthetic_batchnorm": "split"}, "synthetic_batchnorm")):
        with pytest.raises(CeladonError, match=words):
            Trainer(tiny_config(tiny_splits, tmp_path / "bad", **bad), progress=False)


def _study(tmp_path, arms: str, extra: str = "") -> str:
    path = tmp_path / "study.yaml"
    path.write_text(f"seeds: [0]\n{extra}synthesis: {{generators: {{oracle: {{generator: oracle}}}}, "
                    f"plans: {{B: {{preset: B}}}}}}\narms:\n  - {{name: baseline}}\n{arms}")
    return str(path)


def test_an_arm_sets_only_how_it_trains_on_synthetic_rows(tmp_path):
    config = load_study(_study(tmp_path, "  - {name: smooth, plan: B, ratio: 0.1, generator: oracle, "
                                         "classifier: {synthetic_smoothing: 0.2, synthetic_batchnorm: separate}}\n"))
    assert config.arms[1].classifier == {"synthetic_smoothing": 0.2, "synthetic_batchnorm": "separate"}
    for arm, words in (("classifier: {epochs: 3}", "arms.x.classifier.epochs: an arm sets only"),
                       ("classifier: {synthetic_weight: -2}", "synthetic_weight"),
                       ("classifier: {synthetic_batchnorm: both}", "synthetic_batchnorm")):
        with pytest.raises(CeladonError, match=words):
            load_study(_study(tmp_path, f"  - {{name: x, plan: B, ratio: 0.1, generator: oracle, {arm}}}\n"))
    with pytest.raises(CeladonError, match="only arms with synthetic images"):
        load_study(_study(tmp_path, "  - {name: x, classifier: {synthetic_weight: 0.5}}\n"))
    with pytest.raises(CeladonError, match="endpoint_split: 'train'"):
        load_study(_study(tmp_path, "", "endpoint_split: train\n"))


def test_a_development_study_reads_its_arms_on_validation_and_an_arms_options_reach_its_training(tmp_path):
    from celadon.experiment.study import plan_study

    path = _study(tmp_path, "  - {name: weighted, plan: B, ratio: 0.1, generator: oracle, "
                            "classifier: {synthetic_weight: 0.5}}\n", "endpoint_split: val\n")
    stages, _ = plan_study(load_study(path, {"out": str(tmp_path / "out")}))
    evaluations = [s for s in stages if s.kind == "evaluate"]
    # the baseline's seed-0 training is the reference's, read on validation once; and the weighted arm
    assert len(evaluations) == 2 and all(s.settings["split"] == "val" for s in evaluations)
    weights = {s.label: s.settings.get("synthetic_weight") for s in stages if s.kind == "train"}
    assert sorted(weights.values(), key=str) == [0.5, None], weights  # the arm's, not the baseline's


def test_close_gap_trains_only_its_option_arms_beyond_the_demo(tmp_path):
    """The close-gap preset is the demo read on validation: run in the demo's folder, every synthesis stage and
    every training but its option arms' (and its one extra generator's) is the demo's own."""
    from celadon.experiment.study import plan_study

    def stages(name: str) -> dict[str, set[str]]:
        planned, _ = plan_study(load_study(name, {"out": str(tmp_path / "out")}))
        kinds: dict[str, set[str]] = {}
        for s in planned:
            kinds.setdefault(s.kind, set()).add(s.key)
        return kinds

    demo, gap = stages("demo"), stages("close-gap")
    config = load_study("close-gap")
    extra = set(config.synthesis.generators) - set(load_study("demo").synthesis.generators)
    assert extra == {"img2img_translate"}  # inter-class translation: a generator setting, not an arm option
    options = [a for a in config.arms if a.classifier or a.generator in extra]
    assert len(options) == 5
    assert len(gap["train"] - demo["train"]) == len(options) * len(config.seeds)
    assert demo["train"] <= gap["train"]
    assert len(gap["tsne"]) == len(demo["tsne"]) == 1  # one t-SNE plot; it shows every generator's images
    for kind in set(demo) - {"train", "evaluate", "tsne"}:
        added = gap.get(kind, set()) - demo[kind]
        assert demo[kind] <= gap.get(kind, set()), kind  # data, judge, LoRA, generation, QC, curation: the demo's
        # beside them, only the translation generator's stages: its plan-A and plan-B images, their QC, B's curation
        assert len(added) == {"generate": 2, "qc": 2, "curate": 1}.get(kind, 0), kind
