"""`report.html`: one self-contained file (every image inlined as data: URIs, no script, no external link)
that a researcher can send to a colleague. Sections follow the paper: data (Tables 1, 10-12), synthesis
(Table 6, Fig. 6-7), results (Tables 13-15, 17), then the full config and versions for reproduction."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import yaml

from celadon.experiment.comparisons import declared_effect_reach
from celadon.report.figures import validation_curve_png
from celadon.runinfo import atomic_write_text

CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:2px solid #6a9;padding-bottom:.2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#eef5f1}td.l,th.l{text-align:left}.better{color:#0a6b2a;font-weight:600}
.worse{color:#b00020;font-weight:600}.same{color:#666}img{max-width:100%;border:1px solid #ddd;margin:4px}
.figs{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.note{background:#fff8e1;padding:.6em 1em;
border-left:4px solid #e0a800}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}
"""


def _img(path: Path | bytes, alt: str, width: int | None = None) -> str:
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    size = f' width="{width}"' if width else ""
    return f'<img src="data:{mime};base64,{base64.b64encode(data).decode()}" alt="{html.escape(alt)}"{size}>'


def _number(value) -> str:
    """Counts as integers, rates and distances to 4 decimals, a missing value as a dash."""
    if value is None:
        return "—"
    if isinstance(value, list | tuple) and len(value) == 2:  # an interval
        return f"[{value[0]:.2f}, {value[1]:.2f}]"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and value > 1 else f"{value:.4f}"
    return _e(value)


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(str(h))}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ci(row: dict) -> str:
    if row["n"] < 2:
        return f"{row['mean']:.3f}"
    return f"{row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"


def _p(value: float) -> str:
    return "—" if value is None or value != value else (f"{value:.3f}" if value >= 0.001 else f"{value:.0e}")


def _delta(row: dict, full: bool = False) -> str:
    """The paired difference, its 95% t-interval, p adjusted (Holm) and the verdict; `full` adds the interval
    that also covers the test images, the unadjusted p, the detectable effect and the seeds the declared effect
    would need."""
    c = row.get("comparison")
    if c is None:
        return "—"
    css = {"better": "better", "worse": "worse"}.get(c["verdict"], "same")
    text = f'<span class="{css}">{c["difference"]:+.3f}'
    if c["n"] >= 2:
        text += f' [{c["ci_low"]:+.3f}, {c["ci_high"]:+.3f}]'
    text += f'</span> p<sub>adj</sub> {_p(c.get("p_adjusted"))}: {html.escape(c["verdict"])}'
    if c["verdict"] == "no clear change" and c.get("p_adjusted", 1) < c.get("alpha", 0.05):
        text += " (an adjusted interval includes 0)"  # the test alone would say more than the intervals allow
    if full and c["n"] >= 2:
        if c.get("combined_low") is not None and c["combined_low"] == c["combined_low"]:
            text += (f'; seeds and test images [{c["combined_low"]:+.3f}, {c["combined_high"]:+.3f}] '
                     f'({c["combined_df"]:.1f} df)')
        text += f'; p {_p(c["p"])} ({html.escape(c["method"])}, Holm over {c["family_size"]})'
        if c.get("detectable") == c.get("detectable"):
            text += "; " + html.escape(declared_effect_reach(c))
    return text


def _e(value) -> str:
    return html.escape(str(value))


def _headline(results: dict) -> str:
    primary = results.get("primary")
    if not primary:
        return "<p>No classifier was trained.</p>"
    parts = []
    for arm, row in primary["arms"].items():
        text = f"<b>{_e(arm)}</b>: {_ci(row)}"
        if "comparison" in row:
            text += f"; vs {_e(results['baseline'])}: {_delta(row, full=True)}"
        parts.append(f"<li>{text}</li>")
    verdicts = {arm: row["comparison"]["verdict"] for arm, row in primary["arms"].items() if "comparison" in row}
    helped = [a for a, v in verdicts.items() if v == "better"]
    hurt = [a for a, v in verdicts.items() if v == "worse"]
    words = (f"On the primary endpoint, synthetic data <b>helped</b> in: {_e(', '.join(helped))}. " if helped else
             "On the primary endpoint, no arm is clearly better than the baseline: <b>no clear change</b>. ")
    if hurt:
        words += f"It <b>hurt</b> in: {_e(', '.join(hurt))}. "
    secondary = [(r, t) for t in ("table14", "table15", "rare_combinations") for r in results.get(t, [])
                 if r.get("comparison", {}).get("family") == "secondary" and r["verdict"] in ("better", "worse")]
    if secondary:
        words += "Secondary comparisons that survive Holm's correction: " + _e("; ".join(
            f"{r['arm']} {r['measure']} {r['verdict']}" for r, _ in secondary)) + ". "
    else:
        words += "No secondary comparison (per task, per class group, rare combinations) survives Holm's correction. "
    n = len(results["seeds"])
    split = results.get("endpoint_split", "test")
    if split != "test":
        words = ("A development study, read on validation photos to choose between methods; its test photos "
                 "were never read. ") + words
    return (f"<h2>Primary endpoint: {_e(primary['endpoint'])} on {_e(split)}</h2><ul>{''.join(parts)}</ul>"
            f"<p class='note'>{words}Means over {n} seed(s) with 95% Student-t intervals; differences are paired by "
            f"seed; a verdict says better or worse only when the Holm-adjusted p is below {primary['alpha']} and the "
            f"intervals at the matching adjusted level exclude zero. {_e(primary['covers'])}</p>"
            + _controls_section(results))


def _controls_section(results: dict) -> str:
    """Each arm beside its ceiling (the oracle of its plan and ratio) and its null (replay)."""
    controls = {arm: row for arm, row in results.get("controls", {}).items() if "oracle" in row or "replay" in row}
    if not controls:
        return ""

    def share(row: dict) -> str:
        if "oracle" not in row:
            return "—"
        if not row["share_defined"]:
            return "undefined: the oracle's gain is not clear"
        return f"{row['share']:.0%} [{row['share_low']:.0%}, {row['share_high']:.0%}]"

    rows = [[_e(arm), _e(row["generator"]), f"{row['gain']:+.3f}",
             f"{row['oracle_gain']:+.3f}" if "oracle_gain" in row else "—", share(row),
             f"{row['vs_replay']:+.3f} [{row['vs_replay_low']:+.3f}, {row['vs_replay_high']:+.3f}]"
             if "vs_replay" in row else "—"] for arm, row in controls.items()]
    return ("<h3>Against the controls: the oracle's gain is the most perfect images of the plan could give, "
            "replay's is what showing the same photos again gives</h3>"
            + _table(["arm", "generator", "gain", "its oracle's gain", "share of the oracle's gain [Fieller 95%]",
                      "minus replay [t 95%]"], rows, 2)
            + "<p class='note'>On the primary endpoint, paired by seed, not adjusted for multiplicity: these read a "
              "generator against its bounds and set no verdict. A share is defined only where the oracle's own "
              "gain is clear at the 95% level.</p>")


def _budget_section(results: dict) -> str:
    budgets = results.get("budgets", {})
    rows = []
    for arm, seeds in budgets.items():
        values = list(seeds.values())

        def span(key: str, vals=values) -> str:
            numbers = sorted({v.get(key) for v in vals if v.get(key) is not None})
            if not numbers:
                return "—"
            return f"{numbers[0]:,}" if len(numbers) == 1 else f"{numbers[0]:,}–{numbers[-1]:,}"

        labels = values[0].get("labels") or {}  # seed 0's, per task: what each task's loss saw
        rows.append([_e(arm), _e(values[0].get("mixing") or "—"), span("optimizer_steps"),
                     span("real_presentations"), span("synthetic_presentations"), span("epochs"),
                     _e(", ".join(f"{task} {count:,}" for task, count in labels.items()) or "—")])
    if not rows:
        return ""
    return ("<h3>Training budget per arm (over seeds)</h3>" + _table(
        ["arm", "mixing", "optimizer steps", "real images presented", "synthetic images presented", "epochs",
         "labelled presentations per task (first seed)"], rows)
        + "<p><em>on_top</em> (the default): every arm trains the same optimizer steps, a mixed arm's synthetic "
          "images come on top of a full epoch of real ones and the real-only baseline fills the same steps with "
          "real images; a task a synthetic image does not train sees fewer labels than in the baseline, by the "
          "count shown. In <em>replace</em> synthetic images take the place of that share of real draws; "
          "<em>add</em> is the paper's protocol, in which mixed arms train longer.</p>")


def _data_section(results: dict, folder: Path) -> str:
    files, combination = results["files"], results["combination"]
    real = folder / files["imbalance"]["real"]
    groupings = ["+".join(combination), *combination] if len(combination) > 1 else list(combination)
    figures = "".join(_img(real / f"{kind}_{g}.png", f"{kind} {g}", 380) for g in groupings
                      for kind in ("longtail", "lorenz") if (real / f"{kind}_{g}.png").exists())
    summary = folder / files["split_summary"]
    split_rows = [line.split(",") for line in summary.read_text().strip().splitlines()] if summary.exists() else []
    imbalance = []
    for name, stage in files["imbalance"].items():
        data = json.loads((folder / stage / "imbalance.json").read_text())
        for grouping, change in data.get("change", {}).items():
            ratio, gini = change["imbalance_ratio"], change["gini"]
            imbalance.append([_e(name), _e(grouping), f"{ratio['before']:.1f} → {ratio['after']:.1f}",
                              f"{gini['before']:.3f} → {gini['after']:.3f}",
                              f"{change['n_images']['before']} → {change['n_images']['after']}"])
    out = f"<h2>1. Data</h2><div class='figs'>{figures}</div>"
    if split_rows:
        out += "<h3>Adaptive split by label-combination frequency</h3>" + _table(
            split_rows[0], [[_e(c) for c in r] for r in split_rows[1:]])
    if imbalance:
        out += ("<h3>Training-set imbalance before → after adding each QC-passed synthetic set (Tables 10–12)</h3>"
                + _table(["set", "grouping", "imbalance ratio", "Gini", "images"], imbalance, 2))
    return out


def _synthesis_section(results: dict, folder: Path) -> str:
    files = results["files"]
    if "lora_log" not in files:
        return ""
    out = "<h2>2. Synthesis</h2><h3>LoRA training</h3><div class='figs'>"
    if files["lora_log"]:
        log = folder / files["lora_log"]
        out += _img(validation_curve_png({"LoRA loss": _column(log, "loss")}, "LoRA training loss",
                                         _column(log, "step"), "step"), "LoRA loss", 420)
    if files["lora_samples"]:
        out += _img(folder / files["lora_samples"], "LoRA validation samples", 420)
    out += "</div>"
    compare = results.get("table6")
    if compare:
        plan, combination = compare["plan"], results["combination"]
        shown = _e(" × ".join(combination))
        out += (f"<h3>The same plan items (plan {_e(plan)}) from each generator, the img2img source photo on the "
                f"left and real training photos of the same {shown} on the right</h3>"
                + _img(folder / files["strip"], "generators vs real"))
        out += (f"<h3>Table 6: generators on the same plan, and the judge on real validation photos of the same "
                f"{shown} combinations</h3>" + _fidelity_table(compare))
        judge = ", ".join(f"{t} {v:.0%}" for t, v in compare.get("judge_real_top1", {}).items())
        about = results.get("judge", {})
        kind = about.get("kind", "reference")
        who = {"own_render": "a classifier trained on a render of its own, which shares no image with the collection "
                             "(an independent judge)",
               "cross_fit": f"{about.get('folds')} cross-fitted classifiers, each trained without one fold of the "
                            "training photos: each img2img item is read by the one that never saw its source photo "
                            "(independent for img2img; txt2img items are read by a judge that saw the photos the "
                            "LoRA learnt from)"}.get(
            kind, "the reference classifier, which trained on the photos img2img starts from and the LoRA learns "
                  "from (not an independent judge: it reads re-rendered training photos more easily than new ones)")
        out += (f"<p>Label fidelity is judged by {who}; its top-1 accuracy on real validation "
                f"photos is {_e(judge)}. The <em>real photos</em> column is that judge on real validation photos of "
                f"the plan's {shown} combinations, each combination weighted by its plan items (a plan favours "
                "the rarest combinations, where a judge tends to read real photos worst): synthetic images as "
                "convincing as real ones would score about that. <em>Relative fidelity</em> divides the two over "
                "the items whose combination has real photos (1.0 = as convincing as real photos), with a 95% "
                "bootstrap interval that resamples clusters of items (those sharing a source photo or a "
                "combination) and real photos. <em>copy</em> (the source photo unchanged) and <em>roundtrip</em> "
                "(the source through the VAE alone), both read against the item's labels, are what doing nothing "
                "scores: a generator that does not beat them has not changed what the judge reads. For img2img, "
                "<em>source photos</em> is the judge on the training photos the images started from. The judge is "
                "read on validation only: no test label steers selection, plans or QC.</p>")
    sweep = results.get("sweep")
    if sweep:
        out += (f"<h3>Strength sweep of {_e(sweep['generator'])} on plan {_e(sweep['plan'])}: higher strength "
                "re-renders more of the source photo (closer to the prompt, further from the photo)</h3>"
                + _fidelity_table(sweep))
    qc_rows = []
    for key, summary in results["qc"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "—"
        fidelity = ", ".join(f"{t} {v:.0%}" for t, v in summary["label_fidelity"].items()) or "—"
        curated = results.get("curated", {}).get(key)
        trains = "—" if curated is None else (
            f"{curated['accepted']} ({curated['rejected_in_review']} rejected in review): "
            + ", ".join(f"{t} {n}" for t, n in curated["images_per_task"].items()))
        qc_rows.append([_e(key), f"{summary['n_pass']}/{summary['n_images']} ({summary['pass_rate']:.0%})",
                        _e(fidelity), _e(reasons), _e(trains)])
    out += "<h3>Automatic QC, review and what trains</h3>" + _table(
        ["set", "pass", "label fidelity (the judge)", "reasons", "images each task trains on"],
        qc_rows, 4)
    if files.get("tsne"):
        out += "<h3>t-SNE of real and synthetic images</h3>" + _img(folder / files["tsne"], "t-SNE")
    return out


def _fidelity_table(table: dict) -> str:
    names = list(dict.fromkeys(n for values in table["rows"].values() for n in values))
    rows = [[_e(metric)] + [_number(values.get(n)) for n in names] for metric, values in table["rows"].items()]
    return _table(["metric", *names], rows)


def _column(path: Path, name: str) -> list[float]:
    import pandas as pd

    return pd.read_csv(path)[name].tolist()


def _results_section(results: dict, folder: Path) -> str:
    if "table14" not in results:
        return ""
    out = "<h2>3. Classification results</h2>"
    out += _budget_section(results)
    out += ("<h3>Per task (Table 14): mean [95% t-interval] over seeds; each arm's paired difference to the "
            "baseline below its value, with its Holm-adjusted p and verdict</h3>"
            + _pivot(results["table14"], ["task", "metric"], results))
    out += "<h3>Minority vs majority classes (Table 15): mean class F1</h3>" + _pivot(
        results["table15"], ["task", "group"], results)
    rare = results.get("rare_definition", {})
    out += ("<h3>Test images by how rare their label combination is among the training images: top-1 accuracy "
            "averaged over tasks</h3><p>Rare is the plans' own definition: the combination "
            f"{_e(rare.get('combination', ''))} has 1 to {_e(rare.get('rare_max', ''))} real training originals "
            "(these are what the plans generate more of).</p>"
            + _pivot(results["rare_combinations"], ["group"], results))
    for arm, tasks in results["table17"].items():
        rows = [[_e(t), _e(" ↔ ".join(p["pair"])), p["before"], p["after"], f"{p['change']:+d}"]
                for t, pairs in tasks.items() for p in pairs[:5]]
        out += (f"<h3>Confusion pairs, {_e(results['baseline'])} → {_e(arm)} (Table 17; errors summed over "
                "seeds)</h3>" + _table(["task", "pair", "before", "after", "change"], rows, 2))
    curves = results["validation_curves"]
    epochs = list(range(1, max(map(len, curves.values())) + 1))
    out += "<h3>Validation mean macro-F1 per epoch (Table 13), mean over seeds</h3>" + _img(
        validation_curve_png(curves, "validation mean macro-F1", epochs, "epoch"), "validation curves", 520)
    confusion = results["files"]["confusion"]
    for arm, pictures in confusion["arms"].items():
        out += f"<h3>Confusion matrices: {_e(arm)}, seed {confusion['seed']}</h3><div class='figs'>" + "".join(
            _img(folder / p, Path(p).stem, 360) for p in pictures) + "</div>"
    return out


def _pivot(rows: list[dict], keys: list[str], results: dict) -> str:
    """One row per `keys` value, one column per arm: "mean [CI]" over "difference verdict"."""
    arms = [a for a in results["arms"] if any(r["arm"] == a for r in rows)]
    groups: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), {})[row["arm"]] = row
    body = [[_e(v) for v in group] + [f"{_ci(cells[a])}<br>{_delta(cells[a])}" if a in cells else "—" for a in arms]
            for group, cells in groups.items()]
    return _table([*keys, *arms], body, len(keys))


def _reproduce_section(results: dict) -> str:
    config = yaml.safe_dump(results["config"], sort_keys=False, allow_unicode=True)
    stages = [[_e(s["stage"]), _e(s["folder"]), "reused" if s["reused"] else "ran", f"{s['seconds']:.1f}"]
              for s in results.get("stages", [])]
    return ("<h2>4. Reproduce</h2><p>Run <code>celadon run config.yaml</code> with this config; finished stages "
            "are reused by their content address.</p><h3>Config</h3><pre>" + _e(config) + "</pre><h3>Versions</h3>"
            "<pre>" + _e(yaml.safe_dump(results["versions"], sort_keys=False)) + "</pre><h3>Stages</h3>"
            + (f"<p>Wall time of this run: {results['wall_seconds']:.0f} s (trainings that ran at once overlap in "
               "the stage times).</p>" if "wall_seconds" in results else "")
            + _table(["stage", "folder", "this run", "seconds"], stages, 2))


def render_report(results: dict, folder: str | Path) -> str:
    """The report from results.json and the files it names (relative to the study folder `folder`)."""
    folder = Path(folder)
    skipped = "".join(f"<p class='note'>Arm {_e(a)} was not trained: {_e(why)}.</p>"
                      for a, why in results.get("skipped_arms", {}).items())
    body = (f"<h1>celadon: {_e(results['name'])}</h1><p>Arms: {_e(', '.join(results['arms']))}; seeds "
            f"{_e(results['seeds'])}; baseline: {_e(results['baseline'])}.</p>{skipped}"
            + _headline(results) + _data_section(results, folder) + _synthesis_section(results, folder)
            + _results_section(results, folder) + _reproduce_section(results))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>celadon report: "
            f"{_e(results['name'])}</title><style>{CSS}</style></head><body>{body}</body></html>")


def write_report(results: dict, folder: str | Path) -> Path:
    """`folder/report.html` from `results` (as `folder/results.json` holds them)."""
    path = Path(folder) / "report.html"
    atomic_write_text(path, render_report(results, folder))
    return path


def rebuild_report(folder: str | Path) -> Path:
    """`celadon report OUT`: report.html again from OUT/results.json and the files it names, nothing else."""
    from celadon.errors import CeladonError

    source = Path(folder) / "results.json"
    if not source.exists():
        raise CeladonError(f"{folder}: no results.json; give the folder of a finished `celadon run`")
    results = json.loads(source.read_text(encoding="utf-8"))
    if "files" not in results:
        raise CeladonError(f"{source}: written by an older celadon (no 'files' section); re-run `celadon run` in "
                           "that folder once (every finished stage is reused)")
    missing = [str(Path(folder) / p) for p in _named_files(results["files"]) if not (Path(folder) / p).exists()]
    if missing:
        raise CeladonError(f"{missing[0]}: a file results.json names is missing ({len(missing)} in all); copy the "
                           "study folder whole")
    return write_report(results, folder)


def _named_files(files) -> list[str]:
    if isinstance(files, dict):
        return [p for value in files.values() for p in _named_files(value)]
    if isinstance(files, list):
        return [p for value in files for p in _named_files(value)]
    return [files] if isinstance(files, str) else []

