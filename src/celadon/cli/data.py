"""CLI verbs of the data stage: make-demo, validate, analyze, split, augment, weights, importers, contact sheet."""

from __future__ import annotations

import argparse
from pathlib import Path

from celadon.cli import WARNINGS_SHOWN, name_value_pairs, print_problems
from celadon.data.duplicates import DEFAULT_NEAR_DISTANCE


def _taxonomy(args: argparse.Namespace):
    from celadon.taxonomy import load_taxonomy

    return load_taxonomy(args.taxonomy)


def cmd_make_demo(args: argparse.Namespace) -> int:
    from celadon.cli.options import config_from_args
    from celadon.data.embedded import EmbeddedConfig, make_demo

    config = config_from_args(EmbeddedConfig, args, "data make-demo", required=("out",))
    path = make_demo(config.out, config, progress=not args.quiet)
    print(f"embedded dataset: {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from celadon.data.validate import ValidationConfig, validate_manifest
    from celadon.runinfo import write_json

    config = ValidationConfig(min_size=args.min_size, near_distance=args.near_distance, encoding=args.encoding,
                              workers=args.workers, root=args.root, allow_outside_root=args.allow_outside_root,
                              allow_unlabelled=args.allow_unlabelled)
    report = validate_manifest(args.manifest, _taxonomy(args), config, progress=not args.quiet)
    print_problems(report.problems, args.max_errors, args.all)
    if args.json:
        write_json(args.json, {"rows": len(report.manifest), "counts": report.counts(),
                               "duplicate_groups": report.duplicate_groups,
                               "problems": [vars(p) for p in report.problems]})
    if report.duplicate_groups:
        print(f"{report.duplicate_groups} groups of copies ({report.duplicate_files} files)")
    verdict = "FAILED" if report.errors else "ok"
    print(f"{verdict}: {len(report.manifest)} rows, {len(report.errors)} errors, {len(report.warnings)} warnings "
          f"in {args.manifest}")
    return 1 if report.errors else 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from celadon.cli.options import config_from_args
    from celadon.data.check import ImageCheckConfig, read_checked, require_no_errors
    from celadon.data.imbalance import AnalyzeConfig, analyze_manifest
    from celadon.taxonomy import load_taxonomy

    config = config_from_args(AnalyzeConfig, args, "data analyze", required=("manifest", "out"))
    taxonomy = load_taxonomy(config.taxonomy)
    check = ImageCheckConfig(root=config.root, allow_outside_root=config.allow_outside_root)
    tables = []
    for path in [config.manifest] + ([config.compare] if config.compare else []):
        table, _, problems = read_checked(path, taxonomy, check, progress=not args.quiet)
        require_no_errors(problems, path)
        tables.append(table)
    manifest, other = tables[0], (tables[1] if config.compare else None)
    result = analyze_manifest(manifest, config.out, other, config=config)
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
    from celadon.cli.options import config_from_args
    from celadon.data.split import SplitConfig, run_split
    from celadon.taxonomy import load_taxonomy

    config = config_from_args(SplitConfig, args, "data split", required=("manifest", "out"))
    result = run_split(config.manifest, load_taxonomy(config.taxonomy), config.out, config, progress=not args.quiet)
    if result.duplicate_pairs and config.group_duplicates and not config.keep_split:
        print(f"{result.duplicate_pairs} duplicate pairs found; each duplicate group was kept in one split")
    print(result.summary.to_string())
    for line in result.leakage_lines[:WARNINGS_SHOWN]:
        print(line)
    if len(result.leakage_lines) > WARNINGS_SHOWN:
        print(f"... {len(result.leakage_lines) - WARNINGS_SHOWN} more in {Path(config.out) / 'leakage.csv'}")
    if result.leakage_lines and config.keep_split:
        print(f"warning: your split keeps {len(result.leakage_lines)} pairs of copies in different splits; "
              "`celadon train` refuses it unless --allow-leakage (or split without --keep-split)")
    print(f"{len(result.leakage_lines)} leaking duplicate pairs across splits" if config.leakage_check
          else "leakage check skipped")
    print(f"splits written to {result.path}")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from celadon.cli.options import config_from_args
    from celadon.data.augment import AugmentConfig, augment_manifest
    from celadon.data.manifest import read_manifest
    from celadon.taxonomy import load_taxonomy

    config = config_from_args(AugmentConfig, args, "data augment", required=("splits", "out"))
    manifest = read_manifest(config.splits, load_taxonomy(config.taxonomy))
    path, plan = augment_manifest(manifest, config.out, config, progress=not args.quiet)
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

    splits = name_value_pairs(args.split_from, "--split-from NAME=CSV", "--split-from train=train.csv")
    path = import_label_csv(args.csv, args.task, _taxonomy(args), args.out, args.images, args.classes, splits)
    if splits:
        print(f"split kept in column 'source_split' ({', '.join(splits)}); "
              "use `celadon data split --keep-split source_split` to train on it")
    print(f"manifest written to {path}")
    return 0


def cmd_contact_sheet(args: argparse.Namespace) -> int:
    from celadon.data.contact_sheet import contact_sheet
    from celadon.data.manifest import read_manifest

    manifest = read_manifest(args.manifest, _taxonomy(args))
    print(f"contact sheet written to {contact_sheet(manifest, args.out, n=args.n, cell=args.cell, seed=args.seed)}")
    return 0


def _root_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", help="image paths must resolve inside this folder (default: the manifest's folder)")
    p.add_argument("--allow-outside-root", action="store_true", help="accept paths outside the root")


def add_parsers(stages, add) -> None:
    data = stages.add_parser("data", help="manifests, validation, analysis, splits, augmentation")
    verbs = data.add_subparsers(dest="verb", required=True, metavar="VERB")

    from celadon.cli.options import config_arguments

    add(verbs, "make-demo", cmd_make_demo, "render the embedded procedural porcelain dataset",
        config_arguments("celadon.data.embedded:EmbeddedConfig", positional=("out",)))

    p = add(verbs, "validate", cmd_validate, "check every row and image; exit 1 if there are errors")
    p.add_argument("manifest")
    p.add_argument("--min-size", type=int, default=32, help="minimum shorter side in pixels")
    p.add_argument("--near-distance", type=int, default=DEFAULT_NEAR_DISTANCE,
                   help="pHash bits for near duplicates (-1: exact duplicates only)")
    p.add_argument("--all", action="store_true", help="print every warning, not the first 20 of each kind")
    p.add_argument("--encoding", help="manifest text encoding when not UTF-8 (e.g. gb18030)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", help="also write the problems as JSON here")
    _root_options(p)
    p.add_argument("--allow-unlabelled", action="store_true",
                   help="accept rows without any label (images kept for prediction only)")

    add(verbs, "analyze", cmd_analyze, "imbalance metrics and plots per task and label combination",
        config_arguments("celadon.data.imbalance:AnalyzeConfig", positional=("manifest",), skip=("taxonomy",)))
    add(verbs, "split", cmd_split, "adaptive train/val/test split by label-combination frequency",
        config_arguments("celadon.data.split:SplitConfig", positional=("manifest",), skip=("taxonomy",)))
    add(verbs, "augment", cmd_augment, "threshold offline augmentation of rare training combinations",
        config_arguments("celadon.data.augment:AugmentConfig", positional=("splits",), skip=("taxonomy",),
                         choices={"mode": ["virtual", "files"]}))

    p = add(verbs, "weights", cmd_weights, "effective-number class weights and 1/sqrt(n) sampling summary")
    p.add_argument("splits")
    p.add_argument("--beta", type=float, default=0.999)
    p.add_argument("--cap", type=float, default=10.0)
    p.add_argument("--out", help="write the weights as JSON here")

    p = add(verbs, "import-folder", cmd_import_folder, "manifest from a root/<label>/<image> folder tree")
    p.add_argument("root")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True)

    p = add(verbs, "import-csv", cmd_import_csv, "manifest from filename,label CSVs (labels or class indices)")
    p.add_argument("csv", nargs="*", help="CSV files (rows of every file go into one manifest)")
    p.add_argument("--split-from", action="append", default=[], metavar="NAME=CSV",
                   help="a CSV whose rows belong to split NAME (train, val, test); repeatable")
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
