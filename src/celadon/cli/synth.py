"""CLI verbs of the synthesis stage: select (seven tiers) and caption (LoRA training folder)."""

from __future__ import annotations

import argparse


def cmd_select(args: argparse.Namespace) -> int:
    from celadon.data.manifest import read_manifest
    from celadon.errors import CeladonError
    from celadon.synth.select import SelectConfig, run_select
    from celadon.taxonomy import load_taxonomy

    pairs = []
    for item in (args.pairs or "").split(","):
        if item.strip():
            a, sep, b = item.partition(":")
            if not sep:
                raise CeladonError(f"--pairs: {item!r} is not class:class (e.g. white:ivory_white)")
            pairs.append((a.strip(), b.strip()))
    config = SelectConfig(total=args.total, key=tuple(args.key.split(",")), confusion_task=args.confusion_task,
                          pairs=tuple(pairs), metrics=args.metrics, seed=args.seed)
    taxonomy = load_taxonomy(args.taxonomy)
    for a, b in config.pairs:
        for code in (a, b):
            config_task = taxonomy.task(config.confusion_task)
            if code not in config_task.codes:
                raise CeladonError(f"--pairs: {code!r} is not a {config.confusion_task} code; closest: "
                                   f"{', '.join(taxonomy.suggest(config.confusion_task, code))}")
    path, summary = run_select(read_manifest(args.manifest, taxonomy), args.out, config)
    print(summary.to_string(index=False))
    print(f"{int(summary['images'].sum())} images selected; written to {path}")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from celadon.data.manifest import read_manifest
    from celadon.runinfo import write_run_info
    from celadon.synth.captions import write_lora_folder
    from celadon.taxonomy import load_taxonomy

    selection = read_manifest(args.selection, load_taxonomy(args.taxonomy))
    metadata = write_lora_folder(selection, args.out, progress=not args.quiet)
    write_run_info(args.out, "synth caption", {"selection": args.selection, "out": args.out})
    print(f"{len(selection)} captioned images; diffusers metadata in {metadata}, kohya .txt sidecars beside them")
    return 0


def add_parsers(stages, add) -> None:
    synth = stages.add_parser("synth", help="synthetic data: LoRA training-set selection and captions")
    verbs = synth.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = add(verbs, "select", cmd_select, "seven-tier selection of LoRA training images (paper Table 3)")
    p.add_argument("manifest", help="augmented.csv (or splits.csv): the training rows are the pool")
    p.add_argument("--out", required=True)
    p.add_argument("--total", type=int, default=0, help="images to select (0: 1,000 per 5,068 originals)")
    p.add_argument("--key", default="glaze,type", help="tasks forming the combination")
    p.add_argument("--metrics", help="a baseline's metrics.json: its most confused pairs form tier 3")
    p.add_argument("--pairs", help="explicit confusion pairs, e.g. white:ivory_white,moon_white:celadon")
    p.add_argument("--confusion-task", default="glaze")
    p.add_argument("--seed", type=int, default=0)

    p = add(verbs, "caption", cmd_caption, "write the LoRA folder: images, metadata.jsonl, .txt captions")
    p.add_argument("selection", help="selection.csv from `celadon synth select`")
    p.add_argument("--out", required=True)

    p = add(verbs, "qc", cmd_qc, "automatic quality control of synthetic images (per image and FID/KID)")
    p.add_argument("table", help="synthetic images: a manifest with their intended labels")
    p.add_argument("--real", required=True, help="the real splits.csv (training rows are the reference)")
    p.add_argument("--out", required=True)
    p.add_argument("--model", help="a baseline model folder (celadon train) for label fidelity")
    p.add_argument("--fidelity-tasks", default="glaze,type")
    p.add_argument("--expected-size", type=int, help="required image side in pixels")
    p.add_argument("--outlier-z", type=float, default=4.0)
    p.add_argument("--inception", help="local Inception-v3 weights for FID/KID (default: EfficientNet-Lite0)")


def cmd_qc(args: argparse.Namespace) -> int:
    from celadon.synth.qc import QCConfig, run_qc

    config = QCConfig(table=args.table, real=args.real, out=args.out, model_dir=args.model,
                      fidelity_tasks=tuple(args.fidelity_tasks.split(",")), expected_size=args.expected_size,
                      outlier_z=args.outlier_z, inception=args.inception, taxonomy=args.taxonomy)
    summary = run_qc(config, progress=not args.quiet)
    print(f"QC: {summary['n_pass']}/{summary['n_images']} pass ({summary['pass_rate']:.1%})")
    for kind, count in summary["reasons"].items():
        print(f"  {kind}: {count}")
    for task, rate in summary["label_fidelity"].items():
        print(f"  label fidelity {task}: {rate:.1%}")
    if summary["distances"]:
        d = summary["distances"]
        print(f"  FID {d['fid']:.2f}, KID {d['kid_mean']:.4f} ± {d['kid_std']:.4f} on {d['features']}")
    print(f"per-image results in {args.out}/qc.csv")
    return 0
