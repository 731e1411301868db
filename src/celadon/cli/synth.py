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
