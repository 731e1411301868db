"""Real collections: every broken input caught once, with its message and exit code; the user's own
taxonomy (plain lists, roles), labels (NFKC) and split respected; copies across splits refused by train."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from celadon.cli import main
from celadon.errors import CeladonError
from conftest import noise_image, write_manifest_csv

LABELS = {"dynasty": "song", "kiln": "ru", "glaze": "tianqing", "type": "washer"}


def bomb_png(path: Path, width: int, height: int) -> None:
    """A 100-byte PNG that declares width x height pixels: what a decompression bomb looks like to a decoder."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture
def broken(tmp_path, write_images) -> Path:
    """A manifest with one row per kind of broken input (line numbers in comments), beside two good rows."""
    good = write_images(4)
    images = tmp_path / "images"
    (images / "folder").mkdir()
    bomb_png(images / "bomb.png", 25_000, 25_000)
    (images / "empty.jpg").write_bytes(b"")
    os.mkfifo(images / "pipe.jpg")
    os.symlink("loop.jpg", images / "loop.jpg")
    (tmp_path.parent / "secret.jpg").write_bytes((tmp_path / good[0]).read_bytes())
    os.symlink(tmp_path.parent / "secret.jpg", images / "link_out.jpg")
    Image.open(tmp_path / good[1]).resize((60, 60)).save(images / "resized.jpg", quality=90)
    noise_image(50).save(images / "fullwidth.jpg")
    rows = [
        {"path": good[0], **LABELS},                                   # line 2
        {"path": good[1], **LABELS},                                   # line 3
        {"path": "images/folder", **LABELS},                           # line 4
        {"path": "images/bomb.png", **LABELS},                         # line 5
        {"path": "images/empty.jpg", **LABELS},                        # line 6
        {"path": "images/pipe.jpg", **LABELS},                         # line 7
        {"path": "images/loop.jpg", **LABELS},                         # line 8
        {"path": "images/link_out.jpg", **LABELS},                     # line 9
        {"path": "../secret.jpg", **LABELS},                           # line 10
        {"path": str(tmp_path.parent / "secret.jpg"), **LABELS},       # line 11
        {"path": good[2]},                                             # line 12: no label at all
        {"path": "images/resized.jpg", **LABELS, "glaze": "celadon", "type": "bowl"},  # line 13: conflicting copy
        {"path": "images/fullwidth.jpg", "dynasty": "Ｓｏｎｇ"},          # line 14: full-width, accepted
    ]
    return write_manifest_csv(tmp_path / "manifest.csv", rows)


EXPECTED = {  # line -> the message a user reads for it
    4: "'images/folder' [path] is a folder, not an image file; list the images inside it",
    5: "'images/bomb.png' [path] image declares 25000x25000 = 625 megapixels, over the 100 MP limit (a "
       "decompression bomb or an oversized scan); downscale it, or raise --max-pixels if it is genuine",
    6: "'images/empty.jpg' [path] file is empty (0 bytes)",
    7: "'images/pipe.jpg' [path] is a special file (device, pipe or socket), not an image",
    8: "'images/loop.jpg' [path] symbolic link loop (the link points back at itself); replace it with the image file",
    9: "'images/link_out.jpg' [path] leads to {parent}/secret.jpg, outside {root}; keep images inside the manifest's "
       "folder, pass --root FOLDER, or --allow-outside-root",
    10: "'../secret.jpg' [path] leads to {parent}/secret.jpg, outside {root}",
    11: "'{parent}/secret.jpg' [path] leads to {parent}/secret.jpg, outside {root}",
    12: "'images/img0002.jpg' [dynasty,kiln,glaze,type] row has no label at all; label it, drop it, or pass "
        "--allow-unlabelled for prediction-only use",
    3: "[glaze,type] group 1: 2 copies (identical or near-identical images) carry different glaze, type labels "
       "(line 3: glaze=tianqing, type=washer; line 13: glaze=celadon, type=bowl): 'images/img0001.jpg' (line 3), "
       "'images/resized.jpg' (line 13); fix the wrong labels or remove the wrong copies",
}


def _expected(manifest: Path) -> dict[int, str]:
    root = manifest.parent.resolve()
    return {line: f"error: {manifest}:line {line}: " + text.format(parent=root.parent, root=root)
            for line, text in EXPECTED.items()}


def test_validate_reports_every_broken_row_once_with_its_message_and_exits_1(broken, capsys):
    assert main(["data", "validate", str(broken), "--quiet"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    for line, text in _expected(broken).items():
        assert sum(x.startswith(text) for x in lines) == 1, f"line {line}: {text!r} not in\n{out}"
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == len(EXPECTED)  # nothing else: the good rows and the full-width label are fine
    assert "Traceback" not in out
    summary = lines[lines.index("summary:") + 1:]
    assert "  3 paths lead outside the manifest's folder — pass --root FOLDER or --allow-outside-root" in summary
    assert "  2 paths are folders or special files, not images" in summary
    assert "  1 images are over the pixel limit — downscale them, or raise --max-pixels" in summary
    assert lines[-1] == f"FAILED: 12 rows, {len(EXPECTED)} errors, 0 warnings in {broken}"  # the unlabelled row is out


def test_split_and_analyze_refuse_the_same_rows_and_write_nothing(broken, tmp_path, capsys):
    assert main(["data", "split", str(broken), "--out", str(tmp_path / "s"), "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"error: {len(EXPECTED)} problems in {broken}; nothing was written; fix or remove these rows "
                       "(`celadon data validate` lists them with the warnings)")
    for text in _expected(broken).values():
        assert sum(x.startswith(text) for x in err) == 1
    assert not (tmp_path / "s" / "splits.csv").exists()
    assert main(["data", "analyze", str(broken), "--out", str(tmp_path / "a"), "--quiet"]) == 1
    assert f"error: {len(EXPECTED) - 1} problems in {broken}" in capsys.readouterr().err  # analyze reads no copies
    assert not (tmp_path / "a" / "imbalance.json").exists()


def test_max_errors_caps_the_lines_but_the_summary_counts_every_row(tmp_path, write_images, capsys):
    paths = write_images(12)
    rows = [{"path": p, **LABELS, "dynasty": "Jin" if i % 3 else "Tang"} for i, p in enumerate(paths)]
    manifest = write_manifest_csv(tmp_path / "m.csv", rows)
    assert main(["data", "validate", str(manifest), "--quiet", "--max-errors", "3"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len([x for x in lines if x.startswith("error:")]) == 3
    assert "... 9 more errors not shown (raise --max-errors to see them)" in lines
    assert ("  12 rows have dynasty labels the taxonomy does not know: 'Jin' 8, 'Tang' 4 — pass --taxonomy FILE "
            "with your own labels; see README \"Your own collection\"") in lines


def test_outside_paths_pass_with_a_wider_root_or_the_flag(tmp_path, write_images, capsys):
    paths = write_images(2)
    (tmp_path / "lists").mkdir()
    manifest = write_manifest_csv(tmp_path / "lists" / "m.csv", [{"path": f"../{p}", **LABELS} for p in paths])
    assert main(["data", "validate", str(manifest), "--quiet"]) == 1
    assert capsys.readouterr().out.count("leads to") == 2
    assert main(["data", "validate", str(manifest), "--quiet", "--root", str(tmp_path)]) == 0
    assert main(["data", "validate", str(manifest), "--quiet", "--allow-outside-root"]) == 0


def test_the_pixel_limit_is_a_setting(tmp_path, write_images, capsys):
    paths = write_images(2, size=64)
    manifest = write_manifest_csv(tmp_path / "m.csv", [{"path": p, **LABELS} for p in paths])
    assert main(["data", "validate", str(manifest), "--quiet", "--max-pixels", "4000"]) == 1
    assert "image declares 64x64 = 0 megapixels, over the 0 MP limit" in capsys.readouterr().out
    assert main(["data", "validate", str(manifest), "--quiet", "--max-pixels", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --max-pixels 0: give a positive number")
    assert main(["data", "validate", str(manifest), "--quiet"]) == 0  # the default is back for the next command


def test_image_checks_are_cached_by_path_size_and_modification_time(tmp_path, write_images, monkeypatch):
    import celadon.data.check as check

    paths = [tmp_path / p for p in write_images(3)]
    first = check.scan_paths(paths, progress=False)
    monkeypatch.setattr(check, "inspect_image", lambda path: pytest.fail(f"{path} decoded again"))
    assert check.scan_paths(paths, progress=False) == first  # every result from the cache
    noise_image(99).save(paths[1])  # rewritten: new size and modification time
    decoded = []
    monkeypatch.setattr(check, "inspect_image", lambda path: decoded.append(path) or first[0])
    check.scan_paths(paths, progress=False)
    assert decoded == [paths[1]]
    monkeypatch.undo()
    paths[2].write_bytes(b"")  # broken results are cached too, and found again when the file changes
    assert check.scan_paths(paths[2:], progress=False)[0].kind == "zero_size"


def test_predict_reports_a_bomb_and_keeps_every_other_prediction(tmp_path, write_images):
    import torch

    from celadon.classify.models import ModelConfig, MultiTaskNet
    from celadon.classify.predict import LoadedModel, predict_images

    torch.manual_seed(0)
    model = MultiTaskNet(ModelConfig("mobilenet_v3_small", "none", {"glaze": 3}, False, 0.0)).eval()
    loaded = LoadedModel(model, {"image_size": 32, "classes": {"glaze": ["a", "b", "c"]}})
    paths = [tmp_path / p for p in write_images(2)]
    bomb_png(tmp_path / "bomb.png", 30_000, 30_000)
    results, errors = predict_images(loaded, [paths[0], tmp_path / "bomb.png", paths[1]], top_k=2)
    assert [r["image"] for r in results] == [str(paths[0]), str(paths[1])]
    assert len(errors) == 1 and "900 megapixels, over the 100 MP limit" in errors[0]


def test_plain_list_taxonomy_roles_and_full_width_labels(tmp_path):
    from celadon.taxonomy import load_taxonomy

    path = tmp_path / "coins.yaml"
    path.write_text("tasks:\n  period: [Tang, Northern Song, Ming]\n  metal: [bronze, silver]\n"
                    "roles:\n  combination: [metal, period]\n  confusion: period\n", encoding="utf-8")
    taxonomy = load_taxonomy(path)
    assert taxonomy.task("period").codes == ["tang", "northern_song", "ming"]
    assert taxonomy.task("period").label("northern_song").en == "Northern Song"
    assert (taxonomy.combination, taxonomy.confusion) == (("metal", "period"), "period")
    # full-width letters and an ideographic space
    assert taxonomy.resolve("period", "ＮＯＲＴＨＥＲＮ\u3000Ｓｏｎｇ") == "northern_song"
    path.write_text("tasks:\n  period: [Tang]\nroles:\n  combination: [glaze]\n")
    with pytest.raises(CeladonError, match=r"roles names unknown task 'glaze'; tasks are period"):
        load_taxonomy(path)
    path.write_text("tasks:\n  period: [Tang]\n  metal: [bronze]\n")  # no roles: every task, the first for pairs
    assert (load_taxonomy(path).combination, load_taxonomy(path).confusion) == (("period", "metal"), "period")


DYNASTIES = ["Jin", "Tang", "Song", "Yuan", "Ming", "Qing"]


def test_two_csv_class_index_import_keeps_its_split_and_train_refuses_planted_copies(tmp_path, capsys):
    """A public dataset's layout: train/ and val/ folders, `filename,classidx` per split, six dynasties,
    and two images of train copied byte for byte into val."""
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    train_rows, val_rows = ["filename,classidx"], ["filename,classidx"]
    for i in range(24):
        noise_image(i, 48).save(tmp_path / "train" / f"t{i}.jpg")
        train_rows.append(f"t{i}.jpg,{i % 6}")
    for i in range(12):
        noise_image(100 + i, 48).save(tmp_path / "val" / f"v{i}.jpg")
        val_rows.append(f"v{i}.jpg,{i % 6}")
    for i in (0, 1):  # planted: byte-identical copies of training images in val
        shutil.copy(tmp_path / "train" / f"t{i}.jpg", tmp_path / "val" / f"copy{i}.jpg")
        val_rows.append(f"copy{i}.jpg,{i % 6}")
    (tmp_path / "train" / "labels.csv").write_text("\n".join(train_rows) + "\n")
    (tmp_path / "val" / "labels.csv").write_text("\n".join(val_rows) + "\n")
    (tmp_path / "classes.txt").write_text("\n".join(DYNASTIES) + "\n")
    taxonomy = tmp_path / "dynasties.yaml"
    taxonomy.write_text(f"tasks:\n  dynasty: [{', '.join(DYNASTIES)}]\n")
    common = ["--task", "dynasty", "--taxonomy", str(taxonomy), "--out", str(tmp_path / "manifest.csv"),
              "--split-from", f"train={tmp_path / 'train' / 'labels.csv'}",
              "--split-from", f"val={tmp_path / 'val' / 'labels.csv'}"]

    assert main(["data", "import-csv", "--task", "dynasty", "--out", str(tmp_path / "m.csv"), "--split-from",
                 "train", "--quiet"]) == 2
    assert "'train': give --split-from NAME=CSV, e.g. --split-from train=train.csv" in capsys.readouterr().err
    assert main(["data", "import-csv", *common, "--quiet"]) == 2  # class indices without --classes
    assert "look like class indices; pass --classes FILE" in capsys.readouterr().err
    assert main(["data", "import-csv", *common, "--classes", str(tmp_path / "classes.txt"), "--quiet"]) == 0
    assert "source_split" in capsys.readouterr().out

    tax = ["--taxonomy", str(taxonomy), "--quiet"]
    assert main(["data", "validate", str(tmp_path / "manifest.csv"), *tax]) == 0
    out = capsys.readouterr().out
    assert out.count("identical files") == 2 and "2 groups of copies (4 files)" in out
    assert main(["data", "split", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "split"),
                 "--keep-split", "source_split", *tax]) == 0
    out = capsys.readouterr().out
    assert "2 leaking duplicate pairs across splits" in out and "refuses it unless --allow-leakage" in out
    import pandas as pd

    splits = pd.read_csv(tmp_path / "split" / "splits.csv")
    assert (splits["split"] == splits["source_split"]).all() and splits["split"].value_counts().to_dict() == {
        "train": 24, "val": 14}

    train = ["train", str(tmp_path / "split" / "splits.csv"), "--out", str(tmp_path / "model"), "--weights", "none",
             "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--max-steps-per-epoch", "1",
             "--threads", "1", "--cache-dir", str(tmp_path / "cache"), *tax]
    assert main(train) == 1
    err = capsys.readouterr().err.splitlines()
    assert len([x for x in err if "but one is in train and the other in val" in x]) == 2
    assert err[-1].startswith("error: 2 problems in ")
    assert "(2 copies across splits would inflate every metric)" in err[-1]
    assert err[-1].endswith("or pass --allow-leakage to train anyway")
    assert not (tmp_path / "model" / "model.safetensors").exists()
    assert main([*train, "--allow-leakage"]) == 0
    assert "training with 2 pairs of copies across splits (--allow-leakage)" in capsys.readouterr().err
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_a_bug_is_one_line_with_exit_3_and_the_traceback_on_request(tmp_path, monkeypatch, capsys):
    import celadon.data.validate as validate

    monkeypatch.delenv("CELADON_DEBUG", raising=False)
    monkeypatch.setattr(validate, "validate_manifest", lambda *a, **k: {}["boom"])
    manifest = write_manifest_csv(tmp_path / "m.csv", [])
    assert main(["data", "validate", str(manifest), "--quiet"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err == ["internal error: KeyError: 'boom'; this is a bug in celadon, please report it with the output of "
                   "the same command run with CELADON_DEBUG=1"]
    monkeypatch.setenv("CELADON_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["data", "validate", str(manifest), "--quiet"])


def test_a_study_can_keep_the_users_split_column(tmp_path):
    import yaml

    from celadon.experiment.config import load_study

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"split": {"keep_split": "source_split", "seed": 1}}))
    assert load_study(path).split == {"keep_split": "source_split", "seed": 1}


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["data", "split", "--help"])
    out = capsys.readouterr().out
    text = " ".join(out.split())
    assert "--seed SEED each combination is shuffled by a generator derived from it and the combination " \
           "(default: 0)" in text and "(default: 100000000)" in text


def test_top5_of_few_classes_and_undefined_metrics_are_left_out():
    from celadon.classify.metrics import defined, task_metrics

    scores = np.eye(3)[[0, 1, 2, 0]]
    few = task_metrics(np.array([0, 1, 2, 1]), scores, ["a", "b", "c"])
    assert few["top5"] is None and few["top1"] == 0.75
    many = task_metrics(np.array([0, 1]), np.eye(6)[[0, 1]], list("abcdef"))
    assert many["top5"] == 1.0
    empty = defined(task_metrics(np.array([-1, -1]), np.eye(3)[[0, 1]], ["a", "b", "c"]))
    assert empty["top1"] is None and empty["f1_macro"] is None


BRONZES = """# not porcelain: no glaze task, plain label lists, and roles instead of glaze x type
name: bronzes
artefact: bronze vessel
tasks:
  period: [Early, Late]
  workshop: [{workshops}]
  form: [{forms}]
roles:
  combination: [form, period]
  confusion: form
caption_parts: ["{{period}} period", "{{form}} from the {{workshop}} workshop", "ancient bronze"]
"""


@pytest.mark.slow
def test_a_whole_study_runs_on_a_taxonomy_with_other_task_names_and_no_glaze(tmp_path):
    import json

    import pandas as pd
    import yaml

    from celadon.data.embedded import EmbeddedConfig, make_demo
    from test_experiment import SMALL

    demo = pd.read_csv(make_demo(tmp_path / "data", EmbeddedConfig(n=240, size=48, seed=3, workers=1), progress=False))
    # The manifest lives apart from the images (lists/ beside data/): image_root says where they may be.
    frame = pd.DataFrame({"path": "../data/" + demo["path"],
                          "period": demo["dynasty"].map({"song": "Early", "yuan": "Late"}),
                          "workshop": demo["kiln"], "form": demo["type"]})
    (tmp_path / "lists").mkdir()
    frame.dropna(how="all", subset=["period", "workshop", "form"]).to_csv(tmp_path / "lists" / "bronzes.csv",
                                                                          index=False)
    (tmp_path / "bronzes.yaml").write_text(BRONZES.format(workshops=", ".join(sorted(demo["kiln"].dropna().unique())),
                                                          forms=", ".join(sorted(demo["type"].dropna().unique()))))
    # QC's judge measures fidelity on the combination role's tasks; a 1-epoch judge is trusted for no class
    # (a recall above 1 is never reached), so no image fails on it and the mixed arm trains.
    synthesis = SMALL["synthesis"] | {"qc": {"outlier_z": 100.0, "judge_min_recall": 1.01}}
    config = SMALL | {"name": "bronzes", "out": str(tmp_path / "out"),
                      "manifest": str(tmp_path / "lists" / "bronzes.csv"), "image_root": str(tmp_path),
                      "taxonomy": str(tmp_path / "bronzes.yaml"), "synthesis": synthesis, "seeds": [0],
                      "arms": [{"name": "baseline"}, {"name": "A", "plan": "A", "ratio": 0.2, "tasks": ["form"]}]}
    config.pop("embedded")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "study.yaml"), "--quiet"]) == 0

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["skipped_arms"] == {} and results["curated"]["A/lora"]["images_per_task"]["form"] > 0
    assert {r["arm"] for r in results["table14"]} == {"baseline", "A"}
    assert {r["task"] for r in results["table14"]} == {"all", "period", "workshop", "form"}
    assert results["rare_definition"]["combination"] == "period+workshop+form"
    assert "label fidelity form+period" in results["table6"]["rows"]
    stages = tmp_path / "out" / "stages"
    selection = pd.read_csv(next(stages.glob("select-*")) / "selection.csv")
    assert not selection.empty and set(selection["tier_name"]) <= {
        "extreme rare", "very rare", "confusion pair", "moderate rare", "period balance", "form balance", "general"}
    plan = pd.read_csv(next(stages.glob("plan-*")) / "plan.csv")
    assert "glaze" not in plan and plan["prompt"].str.contains("ancient bronze").all()
    report = (tmp_path / "out" / "report.html").read_text()
    assert "form × period" in report and "glaze" not in report.lower()


@pytest.mark.parametrize("tasks", [["dynasty"], ["dynasty", "glaze"]])
def test_rare_and_common_groups_count_one_task_collections_too(tmp_path, tasks):
    """The rare-combination table's groups: with one task, pandas keys its counts by bare labels, which once
    put every test photo under 'unseen' although each label had many training photos."""
    import pandas as pd

    from celadon.data.manifest import Manifest
    from celadon.experiment.results import _rare_masks, combination_groups
    from celadon.taxonomy import load_taxonomy

    path = tmp_path / "t.yaml"
    path.write_text("tasks:\n" + "".join(f"  {t}: [a, b, c]\n" for t in tasks))
    taxonomy = load_taxonomy(str(path))
    labels = ["a"] * 12 + ["b"] * 3 + ["c"] * 2  # a common, b rare, c rare in training (rare_max 5)
    frame = pd.DataFrame({"path": [f"{i}.jpg" for i in range(17)], "split": ["train"] * 15 + ["val"] * 2,
                          **{t: labels for t in tasks}})
    groups = combination_groups(Manifest(frame, tmp_path, taxonomy), rare_max=5)
    assert groups == {"rare": {("b",) * len(tasks)}, "common": {("a",) * len(tasks)}}  # c's 2 are in val

    class Seen:  # test images as the results tables read them
        def labels(self, task):
            return ["a", "b", "c", None]

    masks = _rare_masks(Seen(), tasks, groups)
    assert {g: list(m) for g, m in masks.items()} == {"rare": [False, True, False, False],
                                                      "common": [True, False, False, False],
                                                      "unseen": [False, False, True, False]}
