"""`celadon <stage> <verb>`: a thin layer over the library; every error the user can fix is one line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from celadon.data.duplicates import DEFAULT_NEAR_DISTANCE
from celadon.errors import CeladonError

WARNINGS_SHOWN = 20  # per kind; errors are always all printed


def _taxonomy(args: argparse.Namespace):
    from celadon.taxonomy import load_taxonomy

    return load_taxonomy(args.taxonomy)


def _settings(args: argparse.Namespace) -> dict:
    """The parsed command line as a config to record beside outputs."""
    return {k: v for k, v in vars(args).items() if not callable(v)}


def cmd_make_demo(args: argparse.Namespace) -> int:
    from celadon.data.embedded import DemoConfig, make_demo

    config = DemoConfig(n=args.n, size=args.size, seed=args.seed, workers=args.workers)
    path = make_demo(args.out, config, progress=not args.quiet)
    print(f"embedded dataset: {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from celadon.data.validate import ValidationConfig, validate_manifest
    from celadon.runinfo import write_json

    config = ValidationConfig(min_size=args.min_size, near_distance=args.near_distance, encoding=args.encoding,
                              workers=args.workers)
    report = validate_manifest(args.manifest, _taxonomy(args), config, progress=not args.quiet)
    shown: dict[str, int] = {}
    for problem in report.problems:
        shown[problem.kind] = shown.get(problem.kind, 0) + 1
        if problem.severity == "error" or args.all or shown[problem.kind] <= WARNINGS_SHOWN:
            print(problem)
    for kind, count in shown.items():
        if count > WARNINGS_SHOWN and not args.all and kind not in {p.kind for p in report.errors}:
            print(f"... {count - WARNINGS_SHOWN} more {kind} warnings not shown (--all or --json lists them)")
    if args.json:
        write_json(args.json, {"rows": len(report.manifest), "counts": report.counts(),
                               "problems": [vars(p) for p in report.problems]})
    verdict = "FAILED" if report.errors else "ok"
    print(f"{verdict}: {len(report.manifest)} rows, {len(report.errors)} errors, {len(report.warnings)} warnings "
          f"in {args.manifest}")
    return 1 if report.errors else 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from celadon.data.imbalance import analyze_manifest
    from celadon.data.manifest import read_manifest
    from celadon.runinfo import write_run_info

    taxonomy = _taxonomy(args)
    manifest = read_manifest(args.manifest, taxonomy)
    other = read_manifest(args.compare, taxonomy) if args.compare else None
    result = analyze_manifest(manifest, args.out, other)
    write_run_info(args.out, "data analyze", _settings(args))
    described = result if other is None else result["datasets"]["before"]
    print(f"{'grouping':<14}{'classes':>8}{'images':>8}{'ratio':>9}{'CV':>7}{'Gini':>7}{'H_norm':>8}  buckets")
    for name, g in described["groupings"].items():
        if not g.get("n_classes"):
            continue
        buckets = " ".join(f"{k}:{v}" for k, v in g["size_buckets"].items())
        print(f"{name:<14}{g['n_classes']:>8}{g['n_images']:>8}{g['imbalance_ratio']:>9.1f}"
              f"{g['coefficient_of_variation']:>7.2f}{g['gini']:>7.3f}{g['normalized_entropy']:>8.3f}  {buckets}")
    if other is not None:
        for name, change in result["change"].items():
            ratio = change["imbalance_ratio"]
            print(f"{name}: imbalance ratio {ratio['before']:.1f} -> {ratio['after']:.1f}, "
                  f"Gini {change['gini']['before']:.3f} -> {change['gini']['after']:.3f}")
    print(f"analysis written to {Path(args.out) / 'imbalance.json'}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from celadon.data.split import SplitConfig, run_split

    key = tuple(args.key.split(",")) if args.key else None
    config = SplitConfig(seed=args.seed, key=key)
    result = run_split(args.manifest, _taxonomy(args), args.out, config, near_distance=args.near_distance,
                       check_leakage=not args.no_leakage_check, group_duplicates=not args.no_group_duplicates,
                       progress=not args.quiet)
    if result.duplicate_pairs and not args.no_group_duplicates:
        print(f"{result.duplicate_pairs} duplicate pairs found; each duplicate group was kept in one split")
    print(result.summary.to_string())
    for line in result.leakage_lines[:WARNINGS_SHOWN]:
        print(line)
    if len(result.leakage_lines) > WARNINGS_SHOWN:
        print(f"... {len(result.leakage_lines) - WARNINGS_SHOWN} more in {Path(args.out) / 'leakage.csv'}")
    print(f"{len(result.leakage_lines)} leaking duplicate pairs across splits" if not args.no_leakage_check
          else "leakage check skipped")
    print(f"splits written to {result.path}")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from celadon.data.augment import AugmentConfig, augment_manifest
    from celadon.data.manifest import read_manifest
    from celadon.runinfo import write_run_info

    config = AugmentConfig(threshold=args.threshold, target=args.target, mode=args.mode, seed=args.seed)
    manifest = read_manifest(args.splits, _taxonomy(args))
    path, plan = augment_manifest(manifest, args.out, config, progress=not args.quiet)
    write_run_info(args.out, "data augment", config, config.seed)
    train = int((manifest.frame["split"] == "train").sum())
    print(f"training images: {train} real + {len(plan)} augmented ({config.mode}) = {train + len(plan)} "
          f"({(train + len(plan)) / max(train, 1):.2f}x); val/test untouched")
    print(f"augmented manifest written to {path}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from celadon.data.manifest import read_manifest
    from celadon.data.sampling import combination_sample_weights, task_class_weights
    from celadon.runinfo import write_json

    manifest = read_manifest(args.splits, _taxonomy(args))
    if "split" in manifest.frame.columns:
        manifest = manifest.subset(manifest.frame["split"] == "train")
    result = {"class_weights": {}, "beta": args.beta, "cap": args.cap}
    for task in manifest.tasks:
        weights = task_class_weights(manifest, task, args.beta, args.cap)
        codes = manifest.taxonomy.task(task).codes
        result["class_weights"][task] = {c: round(float(w), 4) for c, w in zip(codes, weights, strict=True)}
        shown = ", ".join(f"{c} {w:.2f}" for c, w in result["class_weights"][task].items() if w > 0)
        print(f"{task}: {shown}")
    keys = manifest.combination_keys()
    sample = combination_sample_weights(keys)
    mass = (keys.to_frame().assign(w=sample).groupby("combination")["w"].sum())
    mass = mass / mass.sum()
    share = keys.value_counts(normalize=True)
    rare = share[share <= share.quantile(0.25)].index
    print(f"1/sqrt(n) sampling: the rarest quarter of combinations holds {share[rare].sum():.1%} of images "
          f"and gets {mass[rare].sum():.1%} of draws")
    if args.out:
        write_json(args.out, result)
        print(f"weights written to {args.out}")
    return 0


def cmd_import_folder(args: argparse.Namespace) -> int:
    from celadon.data.importers import import_folder

    print(f"manifest written to {import_folder(args.root, args.task, _taxonomy(args), args.out)}")
    return 0


def cmd_import_csv(args: argparse.Namespace) -> int:
    from celadon.data.importers import import_label_csv

    path = import_label_csv(args.csv, args.task, _taxonomy(args), args.out, args.images, args.classes)
    print(f"manifest written to {path}")
    return 0


def cmd_contact_sheet(args: argparse.Namespace) -> int:
    from celadon.data.contact_sheet import contact_sheet
    from celadon.data.manifest import read_manifest

    manifest = read_manifest(args.manifest, _taxonomy(args))
    print(f"contact sheet written to {contact_sheet(manifest, args.out, n=args.n, cell=args.cell, seed=args.seed)}")
    return 0


def _run_overrides(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    if args.out:
        overrides["out"] = args.out
    if args.seeds:
        try:
            overrides["seeds"] = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise CeladonError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2") from None
    return overrides


def cmd_demo(args: argparse.Namespace) -> int:
    from celadon.demo import run_study

    run_study("demo", _run_overrides(args), args.set, progress=not args.quiet)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from celadon.demo import run_study

    run_study(args.config, _run_overrides(args), args.set, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="celadon", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def add(sub, name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        p.add_argument("--taxonomy", help="taxonomy YAML (default: the paper's porcelain vocabulary)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        return p

    demo = add(stages, "demo", cmd_demo, "the whole study on the embedded procedural porcelain set (preset demo)")
    run = add(stages, "run", cmd_run, "run an experiment YAML: data, synthesis, every arm x seed, report.html")
    run.add_argument("config", help="a YAML file, or a shipped preset: demo, paper")
    for p in (demo, run):
        p.add_argument("--out", help="output folder (default: the config's out)")
        p.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config setting, e.g. --set classifier.epochs=10 (repeatable)")

    from celadon.cli import classify, review, synth

    bench_verbs = classify.add_parsers(stages, add)
    synth.add_parsers(stages, add, bench_verbs)
    review.add_parsers(stages, add)

    data = stages.add_parser("data", help="manifests, validation, analysis, splits, augmentation")
    verbs = data.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = add(verbs, "make-demo", cmd_make_demo, "render the embedded procedural porcelain dataset")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=3000, help="approximate number of images")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)

    p = add(verbs, "validate", cmd_validate, "check every row and image; exit 1 if there are errors")
    p.add_argument("manifest")
    p.add_argument("--min-size", type=int, default=32, help="minimum shorter side in pixels")
    p.add_argument("--near-distance", type=int, default=DEFAULT_NEAR_DISTANCE,
                   help="pHash bits for near duplicates (-1: exact duplicates only)")
    p.add_argument("--all", action="store_true", help="print every warning, not the first 20 of each kind")
    p.add_argument("--encoding", help="manifest text encoding when not UTF-8 (e.g. gb18030)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", help="also write the problems as JSON here")

    p = add(verbs, "analyze", cmd_analyze, "imbalance metrics and plots per task and label combination")
    p.add_argument("manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--compare", help="a second manifest (e.g. with synthetic images) to put beside the first")

    p = add(verbs, "split", cmd_split, "adaptive train/val/test split by label-combination frequency")
    p.add_argument("manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--key", help="comma-separated tasks forming the combination (default: all tasks)")
    p.add_argument("--near-distance", type=int, default=DEFAULT_NEAR_DISTANCE, help="pHash bits for near duplicates")
    p.add_argument("--no-leakage-check", action="store_true")
    p.add_argument("--no-group-duplicates", action="store_true",
                   help="split duplicates independently (default: a duplicate group stays in one split)")

    p = add(verbs, "augment", cmd_augment, "threshold offline augmentation of rare training combinations")
    p.add_argument("splits", help="splits.csv from `celadon data split`")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=int, default=50)
    p.add_argument("--target", type=int, default=100)
    p.add_argument("--mode", choices=["virtual", "files"], default="virtual")
    p.add_argument("--seed", type=int, default=0)

    p = add(verbs, "weights", cmd_weights, "effective-number class weights and 1/sqrt(n) sampling summary")
    p.add_argument("splits")
    p.add_argument("--beta", type=float, default=0.999)
    p.add_argument("--cap", type=float, default=10.0)
    p.add_argument("--out", help="write the weights as JSON here")

    p = add(verbs, "import-folder", cmd_import_folder, "manifest from a root/<label>/<image> folder tree")
    p.add_argument("root")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True)

    p = add(verbs, "import-csv", cmd_import_csv, "manifest from a filename,label CSV (labels or class indices)")
    p.add_argument("csv")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--images", help="folder the filenames are relative to (default: the CSV's folder)")
    p.add_argument("--classes", help="class index -> name mapping (lines, index,name CSV, JSON or YAML)")

    p = add(verbs, "contact-sheet", cmd_contact_sheet, "a labelled grid of images, one per combination first")
    p.add_argument("manifest")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--cell", type=int, default=128, help="pixels per image")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _version() -> str:
    from celadon import __version__

    return f"celadon {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):  # the Hugging Face libraries' own bars (loading, saving weights) too
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    start = time.perf_counter()
    try:
        code = args.func(args)
    except CeladonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to continue (train: add --resume)", file=sys.stderr)
        return 130
    except OSError as exc:  # permissions, full disk: the user can fix these, a traceback does not help
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; free space or fix permissions, then re-run the same command",
              file=sys.stderr)
        return 2
    if not getattr(args, "quiet", False) and args.stage != "demo":
        print(f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return code

