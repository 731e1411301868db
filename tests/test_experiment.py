"""`celadon run`: config checking, content-addressed stage reuse, results with CIs, and the report in Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from celadon.cli import main
from celadon.errors import CeladonError
from celadon.evaluate.stats import detectable_effect
from celadon.experiment.comparisons import declared_effect_reach, verdict
from celadon.experiment.config import load_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

SMALL = {
    "name": "small study",
    "seeds": [0, 1],
    "embedded": {"n": 240, "size": 48, "seed": 3},
    "classifier": {"image_size": 32, "batch_size": 32, "epochs": 2, "patience": 2},
    "synthesis": {
        "reference": {"image_size": 32, "batch_size": 32, "epochs": 1},
        "lora": {"steps": 2, "batch_size": 4, "checkpoint_every": 2},
        "plans": {"A": {"total": 6, "negative_prompt": ""}},
        "generate": {"steps": 2, "batch_size": 6},
        "qc": {"fidelity_tasks": [], "outlier_z": 100.0},
        "compare_plan": "A",
    },
    "arms": [{"name": "baseline"}, {"name": "A", "plan": "A", "ratio": 0.2, "tasks": ["glaze", "type"]}],
    "tsne_per_set": 20,
    "threads": 1,
    "workers": 1,
    "jobs": 1,  # trainings one at a time, in this process (several at once: the test that sets jobs)
}


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _stages(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["stages"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    config = _write(root / "study.yaml", SMALL | {"out": str(root / "out")})
    assert main(["run", str(config), "--quiet"]) == 0
    return root


def _copy(study: Path, tmp_path: Path) -> Path:
    """The study folder copied for one scenario, so no test changes what the others read."""
    return shutil.copytree(study / "out", tmp_path / "out")


def _run(config: dict, out: Path, tmp_path: Path) -> list[dict]:
    assert main(["run", str(_write(tmp_path / "study.yaml", config | {"out": str(out)})), "--quiet"]) == 0
    return _stages(out)


@pytest.mark.slow
def test_every_stage_runs_once_and_the_reference_is_read_on_validation_only(study):
    first = _stages(study / "out")
    assert first and not any(s["reused"] for s in first[:12])
    labels = [s["stage"] for s in first]
    for expected in ("render embedded dataset", "train LoRA", "generate A/lora", "generate A/vanilla", "QC A/lora",
                     "curate A/lora", "train A (seed 1)", "evaluate baseline (seed 0)",
                     "evaluate reference on val (seed 0)", "t-SNE real vs synthetic"):
        assert expected in labels
    assert "evaluate reference (seed 0)" not in labels  # the reference is never read on test


@pytest.mark.slow
def test_a_copied_study_folder_reuses_every_stage(study, tmp_path):
    out = _copy(study, tmp_path)  # another machine, a colleague: stage folders are found by their keys
    assert all(s["reused"] for s in _run(SMALL, out, tmp_path))
    assert str(study / "out") not in (out / "report.html").read_text()


@pytest.mark.slow
def test_a_classifier_change_reruns_only_training_and_evaluation(study, tmp_path):
    stages = _run(SMALL | {"classifier": SMALL["classifier"] | {"epochs": 1}}, _copy(study, tmp_path), tmp_path)
    reran = [s["stage"] for s in stages if not s["reused"]]
    assert {label.split(" ")[0] for label in reran} == {"train", "evaluate"}
    assert len(reran) == 2 * 2 * 2  # 2 arms x 2 seeds x (train + evaluate); the reference has its own settings


TWIN = {"name": "A again"} | {k: v for k, v in SMALL["arms"][1].items() if k != "name"}  # A's settings, renamed


@pytest.mark.slow
@pytest.mark.parametrize("setting, where", [({"jobs": 2, "arms": [*SMALL["arms"], TWIN]}, "1 thread each"),
                                            ({"devices": ["cpu", "cpu"]}, "on cpu, cpu")])
def test_trainings_at_once_in_their_own_processes_train_the_same_weights(study, tmp_path, capsys, setting, where):
    """jobs: 2 (or two devices, as `--gpus 2` gives) trains the arms two at a time in worker processes, each
    with the thread count it is given: the same stages, bit-identical weights and the same test scores as one at
    a time in this process. An arm with another arm's settings shares its trainings instead of racing them."""
    out = _copy(study, tmp_path)
    for stage in [*(out / "stages").glob("train-*"), *(out / "stages").glob("evaluate-*")]:
        shutil.rmtree(stage)
    stages = _run(SMALL | setting, out, tmp_path)
    assert f"4 trainings, 2 at once ({where})" in capsys.readouterr().out
    assert sorted(s["stage"] for s in stages if not s["reused"] and s["stage"].startswith("train ")) == sorted(
        ["train reference (seed 0)"] + [f"train {arm} (seed {seed})" for arm in ("baseline", "A") for seed in (0, 1)])
    before, after = _stage_files(study / "out", ("train", "evaluate")), _stage_files(out, ("train", "evaluate"))
    assert any(k.endswith("model.safetensors") for k in before) and before.keys() == after.keys()
    assert [k for k in before if before[k] != after[k]] == []
    arms = [json.loads((root / "results.json").read_text())["primary"]["arms"] for root in (study / "out", out)]
    for name in ("baseline", "A"):
        assert arms[1][name]["mean"] == arms[0][name]["mean"]
    if "arms" in setting:
        assert arms[1]["A again"]["mean"] == arms[0]["A"]["mean"]


@pytest.mark.slow
def test_a_review_rejection_reruns_curate_and_only_the_arm_that_mixes_the_image_in(study, tmp_path):
    import pandas as pd

    from celadon.review.store import ReviewStore

    out = _copy(study, tmp_path)
    generation = next(p for p in (out / "stages").glob("generate-*")
                      if any(i.startswith("lora-") for i in json.loads((p / "stage.json").read_text())["inputs"]))
    accepted = pd.read_csv(next((out / "stages").glob("curate-*")) / "accepted.csv", dtype={"item_id": str})
    assert set(accepted["train_tasks"]) == {"dynasty,kiln,glaze,type"}  # every plan row carries all four labels
    ReviewStore(generation).decide([accepted["item_id"].iat[0]], "rejected", "curator", "wrong glaze")
    reran = [s["stage"] for s in _run(SMALL, out, tmp_path) if not s["reused"]]
    assert sorted(reran) == sorted(["curate A/lora", "imbalance (A)"] + [
        f"{verb} A (seed {seed})" for verb in ("train", "evaluate") for seed in (0, 1)])
    curated = json.loads((out / "results.json").read_text())["curated"]["A/lora"]
    assert curated["rejected_in_review"] == 1 and curated["accepted"] == len(accepted) - 1


@pytest.mark.slow
def test_adding_an_img2img_generator_reruns_nothing_the_others_made(study, tmp_path):
    """A new generator (and its strength sweep and arm) adds its own stages; the txt2img generations, their QC,
    curation and arms are reused: their keys do not know the new generator's settings."""
    synthesis = SMALL["synthesis"] | {
        "generators": {"lora": {}, "vanilla": {"lora": False}, "img2img": {"generator": "img2img", "strength": 0.5}},
        "sweep": {"generator": "img2img", "strengths": [0.5, 0.8]}}
    arms = [*SMALL["arms"], {"name": "A img2img", "plan": "A", "ratio": 0.2, "generator": "img2img"}]
    out = _copy(study, tmp_path)
    reran = sorted(s["stage"] for s in _run(SMALL | {"synthesis": synthesis, "arms": arms}, out, tmp_path)
                   if not s["reused"])
    nulls = [f"{verb} A/{null}" for verb in ("generate", "QC") for null in ("copy", "roundtrip")]  # Table 6's
    assert reran == sorted(["generate A/img2img", "QC A/img2img", "generate A/img2img@0.8", "QC A/img2img@0.8",
                            "curate A/img2img", "t-SNE real vs synthetic", *nulls]
                           + [f"{verb} A img2img (seed {seed})" for verb in ("train", "evaluate") for seed in (0, 1)])
    results = json.loads((out / "results.json").read_text())
    rows = results["table6"]["rows"]
    assert sorted(rows["images"]) == ["copy", "img2img", "lora", "real photos", "roundtrip", "vanilla"]
    assert list(rows["images"])[-1] == "real photos"  # a column per generator, then the judge on real photos
    assert list(results["sweep"]["rows"]["images"]) == ["img2img s=0.5", "img2img s=0.8", "real photos"]
    assert results["sweep"]["rows"]["QC pass rate"]["img2img s=0.5"] == rows["QC pass rate"]["img2img"]
    generated = __import__("pandas").read_csv(next(p for p in (out / "stages").glob("generate-*/generated.csv")
                                                   if "img2img" in (p.parent / "run.yaml").read_text()))
    assert generated["source"].map(lambda p: Path(p).is_file()).all()
    report = (out / "report.html").read_text()
    assert "Strength sweep of img2img" in report and "img2img s=0.8" in report
    from PIL import Image

    from celadon.report.figures import CELL

    strip = Image.open(out / results["files"]["strip"])
    assert strip.width == (1 + 3 + 2) * CELL  # source photo, three generators, two real photos


@pytest.mark.slow
def test_results_hold_the_primary_endpoint_and_every_comparison_with_adjusted_p(study):
    results = json.loads((study / "out" / "results.json").read_text())
    overall = {r["arm"]: r for r in results["table14"] if r["task"] == "all"}
    assert set(overall) == {"baseline", "A"}
    assert overall["baseline"]["n"] == 2 and "comparison" not in overall["baseline"]
    assert overall["A"]["low"] <= overall["A"]["mean"] <= overall["A"]["high"]
    values = overall["A"]["values"]
    assert overall["A"]["mean"] == pytest.approx(sum(values.values()) / 2)
    primary = results["primary"]
    assert primary["endpoint"] == "all/mean_f1_macro" and "also cover the test images" in primary["covers"]
    assert "not simultaneous" in primary["covers"]
    comparison = primary["arms"]["A"]["comparison"]
    for key in ("difference", "ci_low", "ci_high", "method", "p", "p_adjusted", "verdict", "combined_low",
                "combined_high", "combined_df", "detectable", "sd_pooled", "effect", "seeds_needed"):
        assert key in comparison
    # the interval that also covers the test images: seeds' and images' variance, Satterthwaite df (at least the
    # seeds' own n - 1: it can be narrower than the t-interval of two seeds, whose t quantile is 12.7)
    assert comparison["combined_low"] < comparison["difference"] < comparison["combined_high"]
    assert comparison["combined_df"] >= comparison["n"] - 1 and comparison["image_sd"] > 0
    assert comparison["effect"] == 0.02  # power is for the declared effect, never the observed difference
    # one arm: its image sd is the pooled one, and the detectable effect counts it beside the seeds' sd
    assert comparison["image_sd_pooled"] == pytest.approx(comparison["image_sd"])
    test_reads = [p / "predictions.csv" for p in (study / "out" / "stages").glob("evaluate-*")
                  if json.loads((p / "stage.json").read_text())["settings"]["split"] == "test"]
    assert comparison["test_images"] == len(test_reads[0].read_text().strip().splitlines()) - 1  # one row each
    sd, n = comparison["sd_pooled"], comparison["n"]
    assert comparison["detectable"] == pytest.approx(detectable_effect(
        sd, n, comparison["alpha"] / comparison["family_size"], image_variance=comparison["image_sd_pooled"] ** 2,
        image_df=comparison["test_images"] - 1))
    assert comparison["detectable"] >= detectable_effect(sd, n)  # two seeds: the t over seeds is what binds
    assert comparison["family"] == "primary" and comparison["family_size"] == 1
    assert comparison["p_adjusted"] == comparison["p"]  # one arm: nothing to adjust for
    assert comparison["difference"] == pytest.approx(overall["A"]["mean"] - overall["baseline"]["mean"])
    secondary = [r["comparison"] for t in ("table14", "table15", "rare_combinations") for r in results[t]
                 if "comparison" in r and r["measure"] != primary["endpoint"]]
    assert all(c["family"] == "secondary" for c in secondary)
    tested = [c for c in secondary if c["p"] == c["p"]]
    assert all(c["p_adjusted"] >= c["p"] and c["family_size"] == len(tested) for c in tested)
    mcnemar = [c for c in secondary if "mcnemar_p_per_seed" in c]
    assert len(mcnemar) == 4  # per-image top-1 of each task, described per seed
    assert all(set(c["mcnemar_p_per_seed"]) == {"0", "1"} and c["method"] != "exact McNemar" for c in mcnemar)
    assert {r["metric"] for r in results["table14"]} >= {"f1_macro", "top1", "top5", "f1_weighted"}
    assert {r["group"] for r in results["table15"]} == {"minority", "majority"}
    assert results["rare_definition"]["combination"] == "dynasty+kiln+glaze+type"
    # Equal budgets: the mixed arm trains exactly the baseline's optimizer steps, its synthetic draws on top of a
    # real epoch (on_top); each task's labelled presentations are on record.
    budgets = results["budgets"]
    for seed in ("0", "1"):
        base, mixed = budgets["baseline"][seed], budgets["A"][seed]
        assert mixed["optimizer_steps"] == base["optimizer_steps"] > 0
        assert mixed["real_presentations"] + mixed["synthetic_presentations"] == base["real_presentations"]
        assert mixed["synthetic_presentations"] > 0 and mixed["mixing"] == "on_top"
        # A's images train glaze and type only (arm tasks): they add those labels and take none of the others'
        assert mixed["labels"]["glaze"] == base["labels"]["glaze"]
        assert mixed["labels"]["kiln"] < base["labels"]["kiln"]
    images = results["table6"]["rows"]["images"]
    assert images["vanilla"] == images["lora"] == 6 and images["real photos"] >= 0
    assert set(results["qc"]) == {"A/lora", "A/vanilla"}
    assert len(results["validation_curves"]["baseline"]) >= 1
    change = results["imbalance"]["A"]["change"]["glaze+type"]["n_images"]
    assert change["after"] == change["before"] + results["qc"]["A/lora"]["n_pass"]


@pytest.mark.slow
def test_the_report_is_rebuilt_from_results_json_and_the_files_it_names_alone(study, tmp_path, capsys):
    from celadon.report.html import _named_files

    out = study / "out"
    results = json.loads((out / "results.json").read_text())
    alone = tmp_path / "alone"
    for name in ["results.json", *_named_files(results["files"])]:
        source, target = out / name, alone / name
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            for item in source.glob("*"):  # a stage folder: the imbalance figures and imbalance.json
                if item.is_file():
                    shutil.copy(item, target / item.name)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    assert main(["report", str(alone), "--quiet"]) == 0
    assert (alone / "report.html").read_text() == (out / "report.html").read_text()
    (alone / results["files"]["tsne"]).unlink()
    assert main(["report", str(alone), "--quiet"]) == 2
    assert "a file results.json names is missing" in capsys.readouterr().err


def test_verdicts_need_the_adjusted_p_and_every_adjusted_interval():
    clear = {"n": 5, "p_adjusted": 0.01, "adj_low": 0.01, "adj_high": 0.03, "adj_combined_low": 0.005,
             "adj_combined_high": 0.04}
    assert verdict(clear, 0.05) == "better"
    assert verdict(clear | {"adj_low": -0.03, "adj_high": -0.01, "adj_combined_low": -0.04,
                            "adj_combined_high": -0.01}, 0.05) == "worse"
    assert verdict(clear | {"p_adjusted": 0.06}, 0.05) == "no clear change"  # Holm says no
    assert verdict(clear | {"adj_combined_low": -0.001}, 0.05) == "no clear change"  # test images say maybe not
    assert verdict(clear | {"n": 1}, 0.05).startswith("1 seed(s)")


def test_the_declared_effects_reach_names_seeds_or_the_test_images_it_would_take():
    base = {"n": 10, "detectable": 0.043, "effect": 0.02, "test_images": 273, "image_sd_pooled": 0.0088}
    assert declared_effect_reach(base | {"seeds_needed": 40}) == (
        "smallest detectable effect ±0.043 (seeds and test images, sd pooled over arms); "
        "about 40 seeds would detect the declared effect of 0.020")
    out_of_reach = declared_effect_reach(base | {"seeds_needed": None, "images_needed": 1028})
    assert out_of_reach.endswith("no number of seeds up to 1,000 detects the declared effect of 0.020 on these "
                                 "273 test images, 10 seeds would on about 1,028 test images")
    assert "10 seeds would not on any test set" in declared_effect_reach(base | {"seeds_needed": None,
                                                                                 "images_needed": None})
    older = {"n": 10, "detectable": 0.035, "effect": 0.02, "seeds_needed": None}  # results.json before images
    for seeds_only in (older, base | older | {"image_sd_pooled": 0.0}):  # or no test-image variance measured
        assert declared_effect_reach(seeds_only) == ("smallest detectable effect ±0.035 (sd pooled over arms); "
                                                     "more than 1,000 seeds would be needed for the declared effect "
                                                     "of 0.020")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is installed by the README's test command")
def test_report_is_self_contained_and_opens_without_broken_images_in_chromium(study, tmp_path):
    from playwright.sync_api import sync_playwright

    report = study / "out" / "report.html"
    text = report.read_text()
    assert "src=\"http" not in text and "<script" not in text  # nothing fetched, nothing executed
    assert "Table 6" in text and "t-SNE" in text and "Table 14" in text
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.goto(report.resolve().as_uri())
        images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert len(images) >= 10 and all(images)
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_config_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(CeladonError, match=r"classifier.epoch: unknown setting"):
        load_study(_write(tmp_path / "a.yaml", {"classifier": {"epoch": 3}}))
    with pytest.raises(CeladonError, match=r"classifier.seed: set by the study runner"):
        load_study(_write(tmp_path / "b.yaml", {"classifier": {"seed": 3}}))
    with pytest.raises(CeladonError, match=r"classifier.taxonomy: set by the study runner"):
        load_study(_write(tmp_path / "t.yaml", {"classifier": {"taxonomy": "mine.yaml"}}))
    with pytest.raises(CeladonError, match=r"arms.X.plan: 'C' is not in synthesis.plans"):
        load_study(_write(tmp_path / "c.yaml", {"arms": [{"name": "baseline"}, {"name": "X", "plan": "C",
                                                                                     "ratio": 0.1}]}))
    with pytest.raises(CeladonError, match=r"arms.X.ratio: must be between 0 and 1"):
        load_study(_write(tmp_path / "d.yaml", {"arms": [{"name": "baseline"}, {"name": "X", "plan": "A",
                                                                                     "ratio": 5}]}))
    with pytest.raises(CeladonError, match="no such config file"):
        load_study(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [")
    with pytest.raises(CeladonError, match="not valid YAML"):
        load_study(tmp_path / "bad.yaml")


@pytest.mark.parametrize("change, message", [
    ({"seeds": "0,1"}, r"^seeds: expected a list of \(a whole number\), got '0,1'$"),
    ({"seeds": 3}, r"^seeds: expected a list of \(a whole number\), got 3$"),
    ({"classifier": {"epochs": "three"}}, r"^classifier.epochs: expected a whole number, got 'three'$"),
    ({"classifier": [1, 2]}, r"^classifier: expected a mapping of settings, got \[1, 2\]$"),
    ({"synthesis": {"lora": {"steps": "many"}}}, r"^synthesis.lora.steps: expected a whole number, got 'many'$"),
    ({"embedded": {"n": "lots"}}, r"^embedded.n: expected a whole number, got 'lots'$"),
    ({"arms": [{"name": "baseline"}, {"name": "B", "plan": "B", "ratio": "0.1"}]},
     r"^arms.B.ratio: expected a number, got '0.1'$"),
    ({"arms": []}, r"^arms: the list is empty"),
    ({"arms": [{"name": "baseline", "ratio": -0.1}]}, r"^arms.baseline: ratio and tasks apply to arms with a plan"),
    ({"arms": [{"name": "baseline"}, {"name": "B", "plan": "B", "ratio": 0.1, "tasks": ["glaz"]}]},
     r"^arms.B.tasks: glaz not a task of the taxonomy"),
    ({"statistics": {"alpha": "0.05"}}, r"^statistics.alpha: expected a number, got '0.05'$"),
    ({"jobs": -1}, r"^jobs: -1: give the number of trainings to run at once, or 0 for one per CPU core$"),
    ({"devices": "cuda:0"}, r"^devices: expected a list of \(text\), got 'cuda:0'$"),
    ({"statistics": {"primary": "glaze/recall"}}, r"^statistics.primary: 'glaze/recall' is not a measure"),
    ({"arms": [{"name": "baseline"}, {"name": "B", "plan": "B", "ratio": 0.1, "generator": "sketch"}]},
     r"^arms.B.generator: 'sketch' is not in synthesis.generators \(lora, vanilla\)$"),
    ({"synthesis": {"generators": {"lora": {}, "i": {"generator": "img2img", "strength": 0.04}}}},
     r"^synthesis.generators.i: strength 0.04 with 20 steps leaves no denoising step"),
    ({"synthesis": {"generators": {"lora": {"generator": "paint"}}}},
     r"^synthesis.generators.lora.generator: 'paint' is unknown; use one of txt2img, img2img, oracle, replay, "
     r"copy, roundtrip$"),
    ({"synthesis": {"sweep": {"generator": "lora", "strengths": [0.5]}}},
     r"^synthesis.sweep: give \{generator: NAME, strengths: \[0.3, 0.5, 0.7\]\} with NAME an img2img generator"),
    ({"synthesis": {"generators": {"lora": {}, "i": {"generator": "img2img"}}, "compare_plan": "A",
                    "sweep": {"generator": "i", "strengths": [0.5, 2]}}},
     r"^synthesis.sweep.strengths: a list of numbers in \(0, 1\], got \[0.5, 2\]$"),
])
def test_wrong_types_and_values_are_one_line_errors_before_any_work(tmp_path, change, message):
    with pytest.raises(CeladonError, match=message):
        load_study(_write(tmp_path / "x.yaml", {"out": str(tmp_path / "out")} | change))
    assert not (tmp_path / "out").exists()  # nothing ran


def test_synthetic_tasks_unknown_to_the_taxonomy_are_refused_by_train(tmp_path):
    from celadon.classify.train import TrainConfig, Trainer
    from celadon.data.embedded import EmbeddedConfig, make_demo
    from celadon.data.split import SplitConfig, run_split
    from celadon.taxonomy import load_taxonomy

    manifest = make_demo(tmp_path / "data", EmbeddedConfig(n=60, size=32, seed=1, workers=1), progress=False)
    splits = run_split(manifest, load_taxonomy(), tmp_path / "split", SplitConfig(seed=0), progress=False).path
    with pytest.raises(CeladonError, match="synthetic_tasks: glaz not among the trained tasks"):
        Trainer(TrainConfig(splits=str(splits), out=str(tmp_path / "t"), synthetic_tasks=["glaz"], weights="none",
                            cache_dir=str(tmp_path / "cache")), progress=False)


def test_set_overrides_nested_settings_with_yaml_values(tmp_path):
    config = load_study("demo", settings=["classifier.epochs=9", "seeds=[4, 5, 6]", "synthesis.lora.steps=7"])
    assert config.classifier["epochs"] == 9 and config.seeds == [4, 5, 6] and config.synthesis.lora["steps"] == 7
    assert config.classifier["image_size"] == load_study("demo").classifier["image_size"]  # rest kept
    with pytest.raises(CeladonError, match="give KEY=VALUE"):
        load_study("demo", settings=["classifier.epochs"])
    with pytest.raises(CeladonError, match="classifier.epochz: unknown setting"):
        load_study("demo", settings=["classifier.epochz=3"])


def test_presets_load():
    from celadon.cli import PRESET_NAMES
    from celadon.experiment.config import PRESETS

    shipped = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    assert sorted(PRESET_NAMES.split(", ")) == shipped  # what `run --help` lists
    for name in shipped:
        load_study(name)
    demo, paper = load_study("demo"), load_study("paper")
    assert demo.manifest is None and len(demo.seeds) >= 3
    assert paper.classifier["backbone"] == "mobilenet_v3_large" and paper.classifier["image_size"] == 224
    assert paper.classifier["epochs"] == 50 and {a.ratio for a in paper.arms} == {0.0, 0.05, 0.10}


def _stage_files(out: Path, kinds: tuple[str, ...]) -> dict[str, bytes]:
    """Every output of the given stage kinds: images, tensors, and tables without their wall times ("seconds"
    columns) and with the experiment's own folder written out of paths."""
    import pandas as pd

    files = {}
    for path in sorted((out / "stages").glob("*/**/*")):
        stage = path.relative_to(out / "stages").parts[0]
        if not path.is_file() or stage.split("-")[0] not in kinds:
            continue
        if path.suffix == ".csv":
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
            data = table.drop(columns=[c for c in table if c == "seconds"]).to_csv(index=False).encode()
        elif path.suffix == ".safetensors":  # the tensors; peft's metadata lists target modules in set order
            from safetensors.numpy import load_file

            tensors = load_file(path)
            data = b"".join(k.encode() + tensors[k].tobytes() for k in sorted(tensors))
        elif path.suffix == ".png":
            data = path.read_bytes()
        else:
            continue
        files[str(path.relative_to(out))] = data.replace(str(out).encode(), b"OUT")
    return files


@pytest.mark.slow
def test_test_labels_change_no_synthetic_image_and_no_trained_weight(tmp_path, monkeypatch):
    """The rule of evidence: no test information in any decision that shapes training. Two studies differ only
    in the labels of their test rows; every selection, plan, LoRA, generated image, QC verdict and classifier
    weight is identical, and only the final test evaluations see the difference."""
    import pandas as pd

    from celadon.experiment.runner import Study
    from celadon.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    config = SMALL | {"seeds": [0]}
    honest = tmp_path / "honest"
    assert main(["run", str(_write(tmp_path / "study.yaml", config)), "--out", str(honest), "--quiet"]) == 0

    split = Study.split

    def relabel_test_rows(self, data):
        stage = split(self, data)
        frame = pd.read_csv(stage.info["splits"], dtype=str, keep_default_na=False)
        test = frame["split"] == "test"
        for task in ("dynasty", "kiln", "glaze", "type"):  # every test label becomes the next class
            codes = taxonomy.task(task).codes
            frame.loc[test, task] = [codes[(codes.index(c) + 1) % len(codes)] if c else c
                                     for c in frame.loc[test, task]]
        frame.to_csv(stage.info["splits"], index=False)
        return stage

    monkeypatch.setattr(Study, "split", relabel_test_rows)
    relabelled = tmp_path / "relabelled"
    assert main(["run", str(tmp_path / "study.yaml"), "--out", str(relabelled), "--quiet"]) == 0

    shaped = ("select", "caption", "lora", "plan", "generate", "qc", "train")
    before, after = _stage_files(honest, shaped), _stage_files(relabelled, shaped)
    assert before.keys() == after.keys()  # the same stages, by the same content keys
    assert {k.split("/")[1].split("-")[0] for k in before} >= {"select", "plan", "generate", "qc", "lora", "train"}
    assert any(k.endswith(".png") and "/generate-" in k for k in before)
    assert [k for k in before if before[k] != after[k]] == []
    # The perturbation was real: the test evaluations read other labels.
    evaluations = [p.name for p in (honest / "stages").glob("evaluate-*")
                   if json.loads((p / "stage.json").read_text())["settings"]["split"] == "test"]
    assert evaluations and any((honest / "stages" / e / "predictions.csv").read_bytes()
                               != (relabelled / "stages" / e / "predictions.csv").read_bytes() for e in evaluations)
    # Selection and plans read the reference's validation evaluation, visibly in their stage.json.
    for kind in ("select", "plan"):
        for stage in (honest / "stages").glob(f"{kind}-*"):
            inputs = json.loads((stage / "stage.json").read_text())["inputs"]
            read = [json.loads((honest / "stages" / i / "stage.json").read_text())["settings"]["split"]
                    for i in inputs if i.startswith("evaluate-")]
            assert read == ["val"]


def test_model_fingerprint_follows_the_weights(tiny_sd, tmp_path):
    """Synthesis stages are keyed by the model's weights, so a rebuilt tiny model is not mistaken for the old."""
    from celadon.synth.pipeline import model_fingerprint

    copy = shutil.copytree(tiny_sd, tmp_path / "model")
    before = model_fingerprint(str(copy))
    assert before == model_fingerprint(str(tiny_sd))
    weights = next(copy.glob("unet/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_fingerprint(str(copy)) != before


@pytest.mark.slow
def test_the_estimate_counts_the_work_the_study_did(study):
    """`bench estimate`'s workload of SMALL equals what running SMALL did: the distinct trainings and the images
    each trained on, LoRA steps and sample grids, every generation's images and denoising steps."""
    import pandas as pd

    from celadon.experiment.estimate import study_workload

    out = study / "out"
    stages = [json.loads(p.read_text()) for p in sorted((out / "stages").glob("*/stage.json"))]
    split = pd.read_csv(next((out / "stages").glob("split-*/splits.csv")))["split"].value_counts()
    work = study_workload(load_study(str(study / "study.yaml")), split["train"], split["val"], split["test"])
    trained = sorted(s["summary"]["optimizer_steps"] * s["settings"]["batch_size"] for s in stages
                     if s["kind"] == "train")
    assert sorted(work.trainings) == trained and len(trained) == 5  # the reference (1 epoch), baseline x 2, A x 2
    epochs = sorted(s["summary"]["epochs"] for s in stages if s["kind"] == "train")
    assert sorted(work.evaluated) == sorted([split["val"] * epochs[0] + split["val"]]  # the reference: on val
                                            + [split["val"] * e + split["test"] for e in epochs[1:]])
    generated = {}
    for s in stages:
        if s["kind"] == "generate":
            run = yaml.safe_load((out / "stages" / f"generate-{s['key']}" / "run.yaml").read_text())["config"]
            name = "A/lora" if run["lora"] else "A/vanilla"
            generated[name] = len(pd.read_csv(s["summary"]["table"])), run["steps"]
    assert work.generated == generated == {"A/lora": (6, 2), "A/vanilla": (6, 2)}
    lora = next(s for s in stages if s["kind"] == "lora")
    assert work.lora_steps == lora["settings"]["steps"] == 2
    assert work.lora_grid_images == 8 * len(list((out / "stages" / f"lora-{lora['key']}" / "samples").glob("*.png")))


def test_the_readmes_study_configs_load_as_written(tmp_path, monkeypatch):
    """The README's complete configs for a user's collection (CPU, and GPU with SD 1.5) are valid studies: every
    key known, typed and not one the runner sets; its taxonomy example is the taxonomy the CPU config names."""
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    taxonomy = next(b for b in blocks if b.startswith("tasks:"))
    studies = [b for b in blocks if "manifest:" in b]
    assert len(studies) == 2
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.yaml").write_text(taxonomy, encoding="utf-8")
    for i, text in enumerate(studies):
        (tmp_path / f"study{i}.yaml").write_text(text, encoding="utf-8")
        config = load_study(tmp_path / f"study{i}.yaml")
        assert config.manifest == "data/manifest.csv"
        assert [a.name for a in config.arms][0] == "baseline" and len(config.arms) >= 2


@pytest.mark.slow
def test_the_dry_run_plans_exactly_the_stages_a_run_makes_and_writes_nothing(study, tmp_path, capsys):
    from celadon.experiment.study import plan_study

    made = {p.name for p in (study / "out" / "stages").iterdir() if (p / "stage.json").exists()}
    fresh = tmp_path / "fresh"
    stages, notes = plan_study(load_study(str(study / "study.yaml"), {"out": str(fresh)}))
    assert {f"{s.kind}-{s.key}" for s in stages} == made and all(s.planned for s in stages) and notes == []
    # every classifier's images pass through the generators' 64 px, real and synthetic alike (one resize path)
    assert {s.settings.get("source_size") for s in stages if s.kind == "train"} == {64}
    card = json.loads(next((study / "out" / "stages").glob("train-*/model.json")).read_text())
    assert card["source_size"] == 64
    assert not fresh.exists()  # nothing written
    again, _ = plan_study(load_study(str(study / "study.yaml")))
    assert {f"{s.kind}-{s.key}" for s in again} == made and not any(s.planned for s in again)
    assert main(["run", str(study / "study.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"0 to run, {len(made)} reused" in out and "work to run (" in out
    before = sorted(p.name for p in (study / "out").rglob("*"))
    assert main(["run", str(study / "study.yaml"), "--dry-run", "--set", "classifier.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "4 classifier trainings" in out  # the arms retrain (2 x 2); the reference has its own settings
    assert sorted(p.name for p in (study / "out").rglob("*")) == before


def test_synthesis_replicates_draw_their_own_lora_and_images_and_the_arms_seeds_cycle_over_them(tmp_path):
    from celadon.experiment.study import plan_study

    config = load_study(_write(tmp_path / "s.yaml", SMALL | {"out": str(tmp_path / "out"), "seeds": [0, 1, 2]}),
                        {}, ["synthesis.replicates=2"])
    stages, _ = plan_study(config)
    by_label = {s.label: s for s in stages}
    loras = [s for s in stages if s.kind == "lora"]
    assert [s.label for s in loras] == ["train LoRA", "train LoRA#1"] and loras[0].key != loras[1].key
    assert loras[1].settings["seed"] == loras[0].settings["seed"] + 1
    plans = {s.label: s for s in stages if s.kind == "plan"}
    assert set(plans) == {"plan A", "plan A#1"} and plans["plan A#1"].settings["seed"] == 1
    # Table 6 (every generator on the compare plan) and the t-SNE read replicate 0 only
    assert "generate A/vanilla#1" not in by_label and "generate A/lora#1" in by_label
    assert f"generate-{by_label['generate A/lora'].key}" in by_label["t-SNE real vs synthetic"].inputs
    assert f"generate-{by_label['generate A/lora#1'].key}" not in by_label["t-SNE real vs synthetic"].inputs
    curated = {s.label: f"curate-{s.key}" for s in stages if s.kind == "curate"}
    trained = [by_label[f"train A (seed {seed})"].inputs for seed in (0, 1, 2)]
    assert [curated["curate A/lora"] in t for t in trained] == [True, False, True]  # seeds cycle: 0, 1, 0
    assert curated["curate A/lora#1"] in trained[1]
    with pytest.raises(CeladonError, match="synthesis.replicates: at least 1"):
        load_study(tmp_path / "s.yaml", {}, ["synthesis.replicates=0"])


def test_the_printed_summary_keeps_a_long_arm_name_apart_from_its_figures(tmp_path, capsys):
    from celadon.experiment.study import print_summary

    arm = "B img2img half weight (90:10)"
    rows = [{"metric": "f1_macro", "task": "glaze", "arm": name, "mean": mean, "n": 1}
            for name, mean in (("baseline", 0.25), (arm, 0.5))]
    (tmp_path / "results.json").write_text(json.dumps({"stages": [], "seeds": [0], "table14": rows}))
    print_summary(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.rstrip().endswith(f"{arm} 0.500") for line in lines)
    assert any(line.rstrip().endswith("baseline" + " " * (len(arm) + 1 - len("baseline")) + "0.250") for line in lines)
