"""CLI verbs of the synthesis stage: select, caption, build-base, train-lora, plan, generate, qc, curate,
and the synthesis benchmarks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from celadon.synth.pipeline import DEFAULT_NEGATIVE


def cmd_select(args: argparse.Namespace) -> int:
    from celadon.data.manifest import read_manifest
    from celadon.errors import CeladonError
    from celadon.synth.select import SelectConfig, run_select, with_roles
    from celadon.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(args.taxonomy)
    config = SelectConfig(total=args.total, key=tuple(args.key.split(",")) if args.key else None,
                          confusion_task=args.confusion_task, pairs=_pairs(args.pairs), metrics=args.metrics,
                          seed=args.seed, allow_test_metrics=args.allow_test_metrics)
    config = with_roles(config, taxonomy)
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
    from celadon.synth.captions import write_lora_folder
    from celadon.taxonomy import load_taxonomy

    selection = read_manifest(args.selection, load_taxonomy(args.taxonomy))
    metadata = write_lora_folder(selection, args.out, progress=not args.quiet)
    print(f"{len(selection)} captioned images; diffusers metadata in {metadata}, kohya .txt sidecars beside them")
    return 0


def _pairs(text: str | None, flag: str = "--pairs") -> tuple[tuple[str, str], ...]:
    from celadon.errors import CeladonError

    pairs = []
    for item in (text or "").split(","):
        if item.strip():
            a, sep, b = item.partition(":")
            if not sep:
                raise CeladonError(f"{flag}: {item!r} is not class:class (e.g. white:ivory_white)")
            pairs.append((a.strip(), b.strip()))
    return tuple(pairs)


def cmd_build_base(args: argparse.Namespace) -> int:
    from celadon.synth.base import BaseConfig, build_base

    given = {"out": args.out, "images": args.images, "vae_max_steps": args.vae_max_steps,
             "decoder_steps": args.decoder_steps, "unet_steps": args.unet_steps}  # None: the shipped model's recipe
    config = BaseConfig(work=args.work, max_minutes=args.max_minutes, threads=args.threads, seed=args.seed,
                        **{key: value for key, value in given.items() if value is not None})
    result = build_base(config, progress=not args.quiet)
    if result is None:
        print(f"stopped after {args.max_minutes} min; run the same command again to continue")
        return 0
    print(f"tiny base model written to {result} (training logs and samples in {result}/training)")
    return 0


def cmd_train_lora(args: argparse.Namespace) -> int:
    from celadon.synth.lora import LoraConfig, train_lora

    config = LoraConfig(data=args.data, out=args.out, model=args.model, rank=args.rank, alpha=args.alpha,
                        learning_rate=args.lr, steps=args.steps, batch_size=args.batch_size,
                        resolution=args.resolution, train_text_encoder=args.train_text_encoder,
                        checkpoint_every=args.checkpoint_every, clip_skip=args.clip_skip,
                        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                        seed=args.seed, threads=args.threads)
    folder = train_lora(config, progress=not args.quiet)
    print(f"LoRA written to {folder} (diffusers format; kohya/A1111 keys in {folder}/kohya); "
          f"sample grids in {args.out}/samples")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from celadon.data.manifest import read_manifest
    from celadon.synth.plan import PlanConfig, run_plan
    from celadon.taxonomy import load_taxonomy

    config = PlanConfig(preset=args.preset, total=args.total, rare_max=args.rare_max,
                        confusion_share=args.confusion_share, confusion_task=args.confusion_task,
                        pairs=_pairs(args.pairs), metrics=args.metrics, max_per_combination=args.max_per_combination,
                        negative_prompt=args.negative_prompt, seed=args.seed,
                        allow_test_metrics=args.allow_test_metrics)
    path, summary = run_plan(read_manifest(args.manifest, load_taxonomy(args.taxonomy)), args.out, config)
    print(summary.to_string(index=False))
    print(f"{int(summary['images'].sum())} images planned; written to {path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from celadon.synth.generate import generate

    table = generate(_generate_config(args), progress=not args.quiet)
    print(f"generated images and their metadata: {table}")
    return 0


def _generate_config(args: argparse.Namespace):
    from celadon.synth.generate import GenerateConfig

    return GenerateConfig(plan=args.plan, out=getattr(args, "out", ""), model=args.model, lora=args.lora,
                          lora_scale=args.lora_scale, steps=args.steps, guidance=args.guidance,
                          clip_skip=args.clip_skip, resolution=args.resolution, batch_size=args.batch_size,
                          shard=getattr(args, "shard", "0/1"), threads=args.threads)


def cmd_bench_lora(args: argparse.Namespace) -> int:
    from celadon.synth.bench import bench_lora
    from celadon.synth.lora import LoraConfig

    result = bench_lora(LoraConfig(data=args.data, model=args.model, batch_size=args.batch_size, threads=args.threads),
                        steps=args.steps)
    for name in ("recipe", "celadon"):
        print(f"{name:>8}: {result[name]['steps_per_s']:.3f} steps/s (run {result[name]['wall_s']:.0f} s)")
    print(f"celadon / diffusers recipe: {result['ratio']:.2f}x (target >= 1.5x)")
    return 0


def cmd_bench_generate(args: argparse.Namespace) -> int:
    from celadon.synth.bench import bench_generate

    result = bench_generate(_generate_config(args), items=args.items)
    print(f" celadon: {result['celadon']['images_per_s']:.2f} images/s")
    print(f"   plain: {result['plain']['images_per_s']:.2f} images/s (StableDiffusionPipeline, one call per image)")
    print(f"celadon / plain: {result['ratio']:.2f}x (target >= 1.0x)")
    return 0


def cmd_qc(args: argparse.Namespace) -> int:
    from celadon.synth.qc import QCConfig, run_qc

    fidelity = tuple(args.fidelity_tasks.split(",")) if args.fidelity_tasks else None
    config = QCConfig(table=args.table, real=args.real, out=args.out, model_dir=args.model,
                      fidelity_tasks=fidelity, expected_size=args.expected_size,
                      outlier_z=args.outlier_z, inception=args.inception, taxonomy=args.taxonomy,
                      judge_metrics=args.judge_metrics, judge_min_recall=args.judge_min_recall,
                      allow_test_metrics=args.allow_test_metrics)
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


def cmd_compare(args: argparse.Namespace) -> int:
    from celadon.cli import name_value_pairs
    from celadon.runinfo import atomic_write_text
    from celadon.synth.qc import compare_qc

    table = compare_qc(name_value_pairs(args.runs, "NAME=QC_FOLDER", "vanilla=runs/qc-vanilla"))
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    if args.csv:
        atomic_write_text(args.csv, table.to_csv())
    return 0


def _generation_arguments(p) -> None:
    p.add_argument("plan", help="plan.csv from `celadon synth plan`")
    p.add_argument("--model", default="tiny", help="tiny (shipped), or a local SD 1.5 folder / .safetensors file")
    p.add_argument("--lora", help="a train-lora output folder or a LoRA .safetensors (diffusers or kohya)")
    p.add_argument("--lora-scale", type=float, default=0.4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--clip-skip", type=int, help="diffusers clip_skip (default: 1 for SD 1.5, 0 for tiny)")
    p.add_argument("--resolution", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the free cores)")


def cmd_curate(args: argparse.Namespace) -> int:
    from celadon.synth.curate import CurateConfig, curate

    path = curate(CurateConfig(qc=args.qc, generation=args.generation, out=args.out, taxonomy=args.taxonomy))
    counts = json.loads((Path(args.out) / "curate.json").read_text())
    print(f"{counts['accepted']} of {counts['generated']} images accepted ({counts['qc_pass']} passed QC, "
          f"{counts['rejected_in_review']} of those rejected in review); per task: "
          + ", ".join(f"{t} {n}" for t, n in counts["images_per_task"].items()))
    print(f"training manifest written to {path} (celadon train --synthetic {path})")
    return 0


def add_parsers(stages, add, bench_verbs) -> None:
    synth = stages.add_parser("synth", help="synthetic data: selection, captions, LoRA, plans, generation, QC")
    verbs = synth.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = add(verbs, "select", cmd_select, "seven-tier selection of LoRA training images (paper Table 3)")
    p.add_argument("manifest", help="augmented.csv (or splits.csv): the training rows are the pool")
    p.add_argument("--out", required=True)
    p.add_argument("--total", type=int, default=0, help="images to select (0: 1,000 per 5,068 originals)")
    p.add_argument("--key", help="tasks forming the combination (default: the taxonomy's combination role)")
    p.add_argument("--metrics", help="a baseline's metrics.json on val: its most confused pairs form tier 3")
    p.add_argument("--allow-test-metrics", action="store_true",
                   help="accept a metrics.json computed on the test split (test labels then steer training)")
    p.add_argument("--pairs", help="explicit confusion pairs, e.g. white:ivory_white,moon_white:celadon")
    p.add_argument("--confusion-task", help="task of the confusion pairs (default: the taxonomy's confusion role)")
    p.add_argument("--seed", type=int, default=0)

    p = add(verbs, "caption", cmd_caption, "write the LoRA folder: images, metadata.jsonl, .txt captions")
    p.add_argument("selection", help="selection.csv from `celadon synth select`")
    p.add_argument("--out", required=True)

    p = add(verbs, "qc", cmd_qc, "automatic quality control of synthetic images (per image and FID/KID)")
    p.add_argument("table", help="synthetic images: a manifest with their intended labels")
    p.add_argument("--real", required=True, help="the real splits.csv (training rows are the reference)")
    p.add_argument("--out", required=True)
    p.add_argument("--model", help="a baseline model folder (celadon train) for label fidelity")
    p.add_argument("--fidelity-tasks", help="tasks the judge checks (default: the taxonomy's combination role)")
    p.add_argument("--expected-size", type=int, help="required image side in pixels")
    p.add_argument("--outlier-z", type=float, default=4.0)
    p.add_argument("--inception", help="local Inception-v3 weights for FID/KID (default: EfficientNet-Lite0)")
    p.add_argument("--judge-metrics", help="the --model's metrics.json on real validation photos")
    p.add_argument("--allow-test-metrics", action="store_true",
                   help="accept a metrics.json computed on the test split (test labels then steer training)")
    p.add_argument("--judge-min-recall", type=float, default=0.0,
                   help="fail a wrong label only where the judge's recall of that class is at least this")
    p = add(verbs, "curate", cmd_curate, "QC verdicts + review decisions -> accepted.csv, the manifest training reads")
    p.add_argument("qc", help="a `celadon synth qc` folder (or its qc.csv)")
    p.add_argument("--generation", help="the generation run reviewed in `celadon review serve` (its review.sqlite)")
    p.add_argument("--out", required=True)

    p = add(verbs, "compare", cmd_compare, "Table 6: QC runs side by side (FID, KID, label fidelity, pass rate)")
    p.add_argument("runs", nargs="+", help="NAME=QC_FOLDER, e.g. vanilla=runs/qc-vanilla lora=runs/qc-lora")
    p.add_argument("--csv", help="also write the table here")

    p = add(verbs, "build-base", cmd_build_base, "train the shipped tiny SD model from scratch (resumable)")
    p.add_argument("--work", default=".celadon/base-build", help="resumable training state")
    p.add_argument("--out", help="where the pipeline goes (default: the package's assets/tiny-sd)")
    # Unset options take the shipped model's recipe (BaseConfig), so the bare command rebuilds it.
    p.add_argument("--images", type=int)
    p.add_argument("--vae-max-steps", type=int)
    p.add_argument("--decoder-steps", type=int, help="decoder-only refinement on the frozen encoder's latents")
    p.add_argument("--unet-steps", type=int)
    p.add_argument("--max-minutes", type=float, default=0, help="stop resumably after this long (0: run to the end)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the free cores)")
    p.add_argument("--seed", type=int, default=0)

    from celadon.synth.lora import LoraConfig

    d = LoraConfig()  # the one source of the defaults (a study's `synthesis.lora` section reads the same)
    p = add(verbs, "train-lora", cmd_train_lora, "LoRA fine-tuning (diffusers + peft), resumable")
    p.add_argument("data", help="a folder from `celadon synth caption`")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=d.model)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--alpha", type=float, default=d.alpha, help="LoRA alpha; the LoRA's scale is alpha / rank")
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--resolution", type=int, default=d.resolution, help="0: the model's native resolution")
    p.add_argument("--train-text-encoder", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--clip-skip", type=int)
    p.add_argument("--mixed-precision", default=d.mixed_precision, choices=["no", "fp16", "bf16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the free cores)")

    p = add(verbs, "plan", cmd_plan, "what to generate: rare combinations and confusion pairs (Datasets A/B)")
    p.add_argument("manifest", help="splits.csv (the training originals are counted)")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="B", choices=["A", "B"], help="A: 5:95 synthetic:real, B: 10:90")
    p.add_argument("--total", type=int, default=0, help="images (overrides the preset)")
    p.add_argument("--rare-max", type=int, default=10)
    p.add_argument("--confusion-share", type=float, default=0.3)
    p.add_argument("--confusion-task", help="task of the confusion pairs (default: the taxonomy's confusion role)")
    p.add_argument("--pairs", help="explicit confusion pairs, e.g. white:ivory_white")
    p.add_argument("--metrics", help="a baseline's metrics.json on val: its most confused pairs")
    p.add_argument("--allow-test-metrics", action="store_true",
                   help="accept a metrics.json computed on the test split (test labels then steer training)")
    p.add_argument("--max-per-combination", type=int, default=0)
    p.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE)
    p.add_argument("--seed", type=int, default=0)

    p = add(verbs, "generate", cmd_generate, "generate a plan (DPM++ 2M Karras, CFG, clip skip, LoRA scale)")
    _generation_arguments(p)
    p.add_argument("--out", required=True)
    p.add_argument("--shard", default="0/1", help="i/n: this process generates every n-th item from i")

    p = add(bench_verbs, "lora", cmd_bench_lora, "LoRA steps/s: cached latents vs the diffusers recipe")
    p.add_argument("data", help="a folder from `celadon synth caption`")
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the free cores)")

    p = add(bench_verbs, "generate", cmd_bench_generate, "images/s: celadon generate vs a plain pipeline loop")
    _generation_arguments(p)
    p.add_argument("--items", type=int, default=16)
