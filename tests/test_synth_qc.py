"""Automatic QC of synthetic images on crafted bad images; FID/KID sanity."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from celadon.cli import main
from celadon.data.embedded import EmbeddedConfig, make_demo
from celadon.data.embedded.render import Labels, render
from celadon.data.split import SplitConfig, run_split
from celadon.evaluate.distances import LITE0_LABEL, image_distances
from celadon.taxonomy import load_taxonomy

LABELS = {"dynasty": "song", "kiln": "longquan", "glaze": "celadon", "type": "bowl"}


@pytest.fixture(scope="module")
def real_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("qc")
    manifest = make_demo(root / "data", EmbeddedConfig(n=90, size=40, seed=4, workers=1), progress=False)
    return run_split(manifest, load_taxonomy(), root / "split", SplitConfig(), progress=False).path


def test_qc_flags_each_crafted_problem(real_splits, tmp_path):
    rows = []

    def add(name, img=None, raw=None, labels=LABELS):
        path = tmp_path / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            img.save(path)
        rows.append({"path": name, **labels, "prompt": "p", "seed": len(rows), "purpose": "rare",
                     "reason": "rare: 1 training image(s)"})

    for i in range(6):
        add(f"good{i}.png", render(Labels(**LABELS), 40, np.random.default_rng(100 + i)))
    add("blank.png", Image.new("RGB", (40, 40), (128, 128, 128)))
    add("big.png", render(Labels(**LABELS), 64, np.random.default_rng(7)))
    add("broken.png", raw=b"\x89PNG broken")
    noise = np.random.default_rng(8).integers(0, 256, (40, 40, 3), dtype=np.uint8)  # a diffusion blow-up
    add("noise.png", Image.fromarray(noise))
    splits = pd.read_csv(real_splits)
    train_image = real_splits.parent / splits.loc[splits["split"] == "train", "path"].iat[0]
    add("memorised.jpg", raw=train_image.read_bytes())
    add("again.png", raw=(tmp_path / "good0.png").read_bytes())
    pd.DataFrame(rows).to_csv(tmp_path / "synthetic.csv", index=False)

    assert main(["synth", "qc", str(tmp_path / "synthetic.csv"), "--real", str(real_splits), "--out",
                 str(tmp_path / "qc"), "--expected-size", "40", "--quiet"]) == 0
    qc = pd.read_csv(tmp_path / "qc" / "qc.csv")
    qc.index = [p.rsplit("/", 1)[-1] for p in qc["path"]]  # paths are rebased onto the qc folder
    reasons = qc["qc_reasons"].fillna("")
    assert "blank (no contrast)" in reasons["blank.png"]
    assert "size 64x64, expected 40" in reasons["big.png"]
    assert "unreadable" in reasons["broken.png"]
    assert "sharpness outlier" in reasons["noise.png"]
    assert "copy of real training image" in reasons["memorised.jpg"]
    assert "duplicate of synthetic good0.png" in reasons["again.png"]
    good = [f"good{i}.png" for i in range(6)]
    assert qc.loc[good, "qc_pass"].all(), reasons[good].tolist()
    assert not qc.drop(index=good)["qc_pass"].any()
    summary = json.loads((tmp_path / "qc" / "qc_summary.json").read_text())
    assert summary["n_pass"] == 6 and summary["pass_rate"] == pytest.approx(6 / 12)
    assert summary["reasons"]["memorised"] == 1 and summary["reasons"]["unreadable"] == 1
    assert summary["distances"]["features"] == LITE0_LABEL and summary["distances"]["fid"] > 0
    # The plan's own columns come through as they were (not rebased like paths).
    assert set(qc["purpose"]) == {"rare"} and set(qc["reason"]) == {"rare: 1 training image(s)"}
    # KID subsets are drawn from a fixed seed: a re-run (or a resumed study) gives the same figures.
    assert main(["synth", "qc", str(tmp_path / "synthetic.csv"), "--real", str(real_splits), "--out",
                 str(tmp_path / "qc2"), "--expected-size", "40", "--quiet"]) == 0
    again = json.loads((tmp_path / "qc2" / "qc_summary.json").read_text())
    assert again["distances"] == summary["distances"]


def test_label_fidelity_uses_the_reference_model(real_splits, tmp_path):
    assert main(["train", str(real_splits), "--out", str(tmp_path / "model"), "--image-size", "32",
                 "--batch-size", "8", "--epochs", "1", "--max-steps-per-epoch", "2", "--threads", "1",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    rows = []
    for i, glaze in enumerate(["celadon", "black", "white", "celadon"]):
        labels = {**LABELS, "glaze": glaze}
        render(Labels(**labels), 40, np.random.default_rng(i)).save(tmp_path / f"s{i}.png")
        rows.append({"path": f"s{i}.png", **labels})
    pd.DataFrame(rows).to_csv(tmp_path / "synthetic.csv", index=False)
    assert main(["synth", "qc", str(tmp_path / "synthetic.csv"), "--real", str(real_splits), "--out",
                 str(tmp_path / "qc"), "--model", str(tmp_path / "model"), "--quiet"]) == 0
    qc = pd.read_csv(tmp_path / "qc" / "qc.csv")
    for _, row in qc.iterrows():
        for task in ("glaze", "type"):
            flagged = f"{task} looks like" in str(row["qc_reasons"])
            assert flagged == (row[f"pred_{task}"] != row[task])
    from celadon.classify.predict import load_model, predict_images

    # the judge's probability of each item's own label, for synthetic_confidence: its reading, by hand
    [read], _ = predict_images(load_model(tmp_path / "model"), [tmp_path / "s1.png"], top_k=99)
    assert qc["judge_p_glaze"].iat[1] == pytest.approx(dict(read["glaze"])["black"], abs=1e-4)
    assert qc["judge_p_type"].between(0, 1).all() and "judge_p_kiln" not in qc  # the tasks it reads
    summary = json.loads((tmp_path / "qc" / "qc_summary.json").read_text())
    expected = float((qc["pred_glaze"] == qc["glaze"]).mean())
    assert summary["label_fidelity"]["glaze"] == pytest.approx(expected)
    assert "second_reader" not in summary and not any(c.startswith("second_pred_") for c in qc)

    # A second reader (the reference, beside an independent judge) reads the same images; the summary counts
    # the labels the judge confirms that it misreads. Read by the judge's own weights, it agrees everywhere.
    assert main(["synth", "qc", str(tmp_path / "synthetic.csv"), "--real", str(real_splits), "--out",
                 str(tmp_path / "qc-second"), "--model", str(tmp_path / "model"), "--second-reader",
                 str(tmp_path / "model"), "--quiet"]) == 0
    second = pd.read_csv(tmp_path / "qc-second" / "qc.csv")
    assert list(second["second_pred_glaze"]) == list(second["pred_glaze"]) == list(qc["pred_glaze"])
    counts = json.loads((tmp_path / "qc-second" / "qc_summary.json").read_text())["second_reader"]
    assert counts["glaze"] == {"judge_confirms": int((qc["pred_glaze"] == qc["glaze"]).sum()),
                               "second_reader_misreads": 0, "second_reader_agrees_judge_rejects": 0}
    from celadon.synth.readings import confirmed_misreads

    table = pd.DataFrame({"glaze": ["a", "a", "b", "b", None], "pred_glaze": ["a", "a", "a", "b", "a"],
                          "second_pred_glaze": ["a", "c", "b", "c", "c"]})
    assert confirmed_misreads(table, ["glaze"]) == {"glaze": {
        "judge_confirms": 3, "second_reader_misreads": 2, "second_reader_agrees_judge_rejects": 1}}

    # The judge is trusted only for classes it recognises on real validation photos: here only celadon.
    judge = {"split": "val", "tasks": {"glaze": {"per_class": {"celadon": {"recall": 0.9}, "black": {"recall": 0.1}}},
                       "type": {"per_class": {}}}}
    (tmp_path / "judge.json").write_text(json.dumps(judge))
    assert main(["synth", "qc", str(tmp_path / "synthetic.csv"), "--real", str(real_splits), "--out",
                 str(tmp_path / "qc-judged"), "--model", str(tmp_path / "model"), "--judge-metrics",
                 str(tmp_path / "judge.json"), "--judge-min-recall", "0.5", "--quiet"]) == 0
    judged = pd.read_csv(tmp_path / "qc-judged" / "qc.csv")
    for _, row in judged.iterrows():
        flagged = "glaze looks like" in str(row["qc_reasons"])
        assert flagged == (row["pred_glaze"] != row["glaze"] and row["glaze"] == "celadon")
        assert "type looks like" not in str(row["qc_reasons"])  # no type class is trusted
    judged_summary = json.loads((tmp_path / "qc-judged" / "qc_summary.json").read_text())
    assert judged_summary["label_fidelity"] == summary["label_fidelity"]  # measured the same, gated less
    assert main(["synth", "qc", str(tmp_path / "synthetic.csv"), "--real", str(real_splits), "--out",
                 str(tmp_path / "qc-nojudge"), "--model", str(tmp_path / "model"), "--judge-min-recall", "0.5",
                 "--quiet"]) == 2
    # A judge calibrated on test photos would let test labels decide which synthetic images train: refused.
    (tmp_path / "judge-test.json").write_text(json.dumps(judge | {"split": "test"}))
    assert main(["synth", "qc", str(tmp_path / "synthetic.csv"), "--real", str(real_splits), "--out",
                 str(tmp_path / "qc-test"), "--model", str(tmp_path / "model"), "--judge-metrics",
                 str(tmp_path / "judge-test.json"), "--judge-min-recall", "0.5", "--quiet"]) == 2
    assert not (tmp_path / "qc-test" / "qc.csv").exists()

    # The same images drawn by a control (the oracle): true labels by construction, so the judge's misreadings
    # neither fail nor mask them, and are still recorded (the judge's own ceiling on perfect images).
    pd.DataFrame(rows).assign(generator="oracle").to_csv(tmp_path / "oracle.csv", index=False)
    assert main(["synth", "qc", str(tmp_path / "oracle.csv"), "--real", str(real_splits), "--out",
                 str(tmp_path / "qc-oracle"), "--model", str(tmp_path / "model"), "--task-masks", "--quiet"]) == 0
    oracle = pd.read_csv(tmp_path / "qc-oracle" / "qc.csv")
    assert list(oracle["pred_glaze"]) == list(qc["pred_glaze"]) and (qc["pred_glaze"] != qc["glaze"]).any()
    assert oracle["qc_pass"].all() and set(oracle["qc_tasks"]) == {"dynasty,kiln,glaze,type"}
    assert oracle["qc_masked"].isna().all()


def test_kid_and_fid_separate_distributions():
    rng = np.random.default_rng(0)
    real = np.stack([np.asarray(render(Labels(**LABELS), 48, rng)) for _ in range(12)])
    same = np.stack([np.asarray(render(Labels(**LABELS), 48, rng)) for _ in range(12)])
    other = np.stack([np.asarray(render(Labels("song", "jian", "black", "teabowl"), 48, rng)) for _ in range(12)])
    near, far = image_distances(real, same), image_distances(real, other)
    assert far.kid_mean > near.kid_mean and far.fid > near.fid


def test_the_real_sets_features_are_extracted_once_and_give_the_same_distances(monkeypatch):
    from celadon.evaluate import distances

    rng = np.random.default_rng(1)
    real = np.stack([np.asarray(render(Labels(**LABELS), 40, rng)) for _ in range(10)])
    first, second = (np.stack([np.asarray(render(Labels(**LABELS), 40, rng)) for _ in range(6)]) for _ in range(2))
    images_seen = []
    forward = distances.Lite0Features.forward
    monkeypatch.setattr(distances.Lite0Features, "forward",
                        lambda self, images: images_seen.append(len(images)) or forward(self, images))
    monkeypatch.setattr(distances, "_REAL_FEATURES", {})
    fresh = distances.image_distances(real, second, batch_size=4)
    assert sum(images_seen) == 10 + 6
    images_seen.clear()
    distances.image_distances(real, first, batch_size=4)
    cached = distances.image_distances(real, second, batch_size=4)
    assert sum(images_seen) == 6 + 6  # the real set's 10 images were not extracted again
    assert cached == fresh
    distances.image_distances(real[:8], second, batch_size=4)  # other real images: extracted anew
    assert sum(images_seen) == 6 + 6 + 8 + 6


def test_copy_check_reads_every_training_original_and_fid_reads_validation(real_splits, tmp_path):
    """Independent references: a copy of *any* training original fails, however few photos the statistics
    sample; FID/KID compare with held-out validation photos, which no generator starts from."""
    from celadon.synth.qc import QCConfig, run_qc

    splits = pd.read_csv(real_splits)
    train = splits[splits["split"] == "train"]
    train = train[train["augmentation_seed"].fillna(-1) < 0] if "augmentation_seed" in train else train
    rows = []
    for i, relative in enumerate(train["path"].iloc[-3:]):  # the last originals: outside a 2-photo sample
        copy = tmp_path / f"copy{i}.jpg"
        copy.write_bytes((real_splits.parent / relative).read_bytes())
        rows.append({"path": copy.name, **LABELS})
    for i in range(3):
        render(Labels(**LABELS), 40, np.random.default_rng(200 + i)).save(tmp_path / f"new{i}.png")
        rows.append({"path": f"new{i}.png", **LABELS})
    pd.DataFrame(rows).to_csv(tmp_path / "synthetic.csv", index=False)
    summary = run_qc(QCConfig(table=str(tmp_path / "synthetic.csv"), real=str(real_splits), out=str(tmp_path / "qc"),
                              max_real_reference=2), progress=False)
    qc = pd.read_csv(tmp_path / "qc" / "qc.csv")
    memorised = qc["qc_reasons"].fillna("").str.contains("copy of real training image")
    assert memorised.tolist() == [True] * 3 + [False] * 3
    assert summary["copy_check_originals"] == len(train) and summary["statistics_reference"] == 2
    assert summary["distance_reference"] == {"split": "val", "images": 2}
