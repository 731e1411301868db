"""CLI verbs of the synthesis stage: select, caption, build-base, train-lora, plan, generate, qc, curate,
and the synthesis benchmarks."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from celadon.cli.options import BENCH_JSON_HELP, DEVICE_HELP, write_bench_json


def cmd_select(args: argparse.Namespace) -> int:
    from celadon.cli.options import config_from_args
    from celadon.data.manifest import read_manifest
    from celadon.errors import CeladonError
    from celadon.synth.select import SelectConfig, run_select, with_roles
    from celadon.taxonomy import load_taxonomy

    config = config_from_args(SelectConfig, args, "synth select", required=("manifest", "out"))
    taxonomy = load_taxonomy(config.taxonomy)
    config = with_roles(config, taxonomy)
    for a, b in config.pairs:
        for code in (a, b):
            config_task = taxonomy.task(config.confusion_task)
            if code not in config_task.codes:
                raise CeladonError(f"--pairs: {code!r} is not a {config.confusion_task} code; closest: "
                                   f"{', '.join(taxonomy.suggest(config.confusion_task, code))}")
    path, summary = run_select(read_manifest(config.manifest, taxonomy), config.out, config)
    print(summary.to_string(index=False))
    print(f"{int(summary['images'].sum())} images selected; written to {path}")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from celadon.cli.options import config_from_args
    from celadon.data.manifest import read_manifest
    from celadon.synth.captions import CaptionConfig, write_lora_folder
    from celadon.taxonomy import load_taxonomy

    config = config_from_args(CaptionConfig, args, "synth caption", required=("selection", "out"))
    selection = read_manifest(config.selection, load_taxonomy(config.taxonomy))
    metadata = write_lora_folder(selection, config.out, progress=not args.quiet, taxonomy=config.taxonomy)
    print(f"{len(selection)} captioned images; diffusers metadata in {metadata}, kohya .txt sidecars beside them")
    return 0


def cmd_build_base(args: argparse.Namespace) -> int:
    from celadon.errors import CeladonError
    from celadon.synth.base import BaseConfig, build_base

    if args.architecture != "tiny" and not args.out:
        raise CeladonError(f"give --out for a {args.architecture!r} base model: the default is the shipped tiny "
                           "model's folder, which it would replace")
    given = {"out": args.out, "images": args.images, "vae_max_steps": args.vae_max_steps,
             "decoder_steps": args.decoder_steps, "unet_steps": args.unet_steps}  # None: the shipped model's recipe
    config = BaseConfig(work=args.work, max_minutes=args.max_minutes, threads=args.threads, seed=args.seed,
                        architecture=args.architecture, vae_from=args.vae_from or "", device=args.device,
                        **{key: value for key, value in given.items() if value is not None})
    result = build_base(config, progress=not args.quiet)
    if result is None:
        print(f"stopped after {args.max_minutes} min; run the same command again to continue")
        return 0
    print(f"{config.architecture} base model written to {result} (training logs and samples in {result}/training)")
    return 0


def cmd_train_lora(args: argparse.Namespace) -> int:
    from celadon.cli.options import config_from_args
    from celadon.synth.lora import LoraConfig, train_lora

    config = config_from_args(LoraConfig, args, "synth train-lora", required=("data", "out"))
    folder = train_lora(config, progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":  # one of several `accelerate launch` processes: the first one reports
        return 0
    print(f"LoRA written to {folder} (diffusers format; kohya/A1111 keys in {folder}/kohya); "
          f"sample grids in {config.out}/samples")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from celadon.cli.options import config_from_args
    from celadon.data.manifest import read_manifest
    from celadon.synth.plan import PlanConfig, run_plan
    from celadon.taxonomy import load_taxonomy

    config = config_from_args(PlanConfig, args, "synth plan", required=("manifest", "out"))
    path, summary = run_plan(read_manifest(config.manifest, load_taxonomy(config.taxonomy)), config.out, config)
    print(summary.to_string(index=False))
    print(f"{int(summary['images'].sum())} images planned; written to {path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from celadon.synth.generate import generate

    table = generate(_generate_config(args, "synth generate", ("plan", "out")), progress=not args.quiet)
    print(f"generated images and their metadata: {table}")
    return 0


def _generate_config(args: argparse.Namespace, command: str, required: tuple[str, ...]):
    from celadon.cli.options import config_from_args
    from celadon.synth.generate import GenerateConfig

    return config_from_args(GenerateConfig, args, command, required)


def cmd_bench_lora(args: argparse.Namespace) -> int:
    from celadon.synth.bench import bench_lora
    from celadon.synth.lora import LoraConfig

    config = LoraConfig(data=args.data, model=args.model, batch_size=args.batch_size, threads=args.threads,
                        resolution=args.resolution, mixed_precision=args.mixed_precision, device=args.device,
                        gradient_checkpointing=args.gradient_checkpointing, rank=args.rank, alpha=float(args.rank),
                        train_text_encoder=args.train_text_encoder)
    result = bench_lora(config, steps=args.steps)
    write_bench_json(args.json, result, model=args.model, batch_size=args.batch_size, resolution=args.resolution,
                     rank=args.rank, train_text_encoder=args.train_text_encoder, steps=args.steps,
                     mixed_precision=args.mixed_precision)
    for name in ("recipe", "celadon"):
        print(f"{name:>8}: {result[name]['steps_per_s']:.3f} steps/s (run {result[name]['wall_s']:.0f} s)")
    print(f"celadon / diffusers recipe: {result['ratio']:.2f}x (target >= 1.5x)")
    return 0


def cmd_bench_generate(args: argparse.Namespace) -> int:
    from celadon.synth.bench import bench_generate

    config = _generate_config(args, "synth generate", ("plan",))  # -c takes a generation's run.yaml
    if config.generator != "txt2img":
        from celadon.errors import CeladonError

        raise CeladonError(f"bench generate measures txt2img against a plain pipeline loop; {config.generator} "
                           "has no plain counterpart here")
    result = bench_generate(config, items=args.items)
    write_bench_json(args.json, result, model=config.model, batch_size=config.batch_size,
                     resolution=config.resolution, steps=config.steps, guidance=config.guidance)
    print(f" celadon: {result['celadon']['images_per_s']:.2f} images/s")
    print(f"   plain: {result['plain']['images_per_s']:.2f} images/s (StableDiffusionPipeline, one call per image)")
    print(f"celadon / plain: {result['ratio']:.2f}x (target >= 1.0x)")
    return 0


def cmd_qc(args: argparse.Namespace) -> int:
    from celadon.cli.options import config_from_args
    from celadon.synth.qc import QCConfig, run_qc

    config = config_from_args(QCConfig, args, "synth qc", required=("table", "real", "out"))
    summary = run_qc(config, progress=not args.quiet)
    print(f"QC: {summary['n_pass']}/{summary['n_images']} pass ({summary['pass_rate']:.1%})")
    for kind, count in summary["reasons"].items():
        print(f"  {kind}: {count}")
    for task, rate in summary["label_fidelity"].items():
        print(f"  label fidelity {task}: {rate:.1%}")
    if summary["distances"]:
        d = summary["distances"]
        print(f"  FID {d['fid']:.2f}, KID {d['kid_mean']:.4f} ± {d['kid_std']:.4f} on {d['features']}")
    print(f"per-image results in {config.out}/qc.csv")
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


def _generation_arguments(p, *skip: str, txt2img_only: bool = False) -> None:
    from celadon.cli.options import add_config_arguments
    from celadon.synth.generate import GENERATORS, GenerateConfig

    if txt2img_only:  # bench generate times txt2img: img2img's own settings and the generator choice are not flags
        skip += (*GENERATORS["img2img"].settings, "generator")
    methods = "; ".join(f"{name}: {g.description}" for name, g in GENERATORS.items())
    add_config_arguments(p, GenerateConfig, positional=("plan",), skip=("taxonomy", *skip),
                         helps={"generator": methods})


def cmd_curate(args: argparse.Namespace) -> int:
    from celadon.cli.options import config_from_args
    from celadon.synth.curate import CurateConfig, curate

    config = config_from_args(CurateConfig, args, "synth curate", required=("qc", "out"))
    path = curate(config)
    counts = json.loads((Path(config.out) / "curate.json").read_text())
    print(f"{counts['accepted']} of {counts['generated']} images accepted ({counts['qc_pass']} passed QC, "
          f"{counts['rejected_in_review']} of those rejected in review); per task: "
          + ", ".join(f"{t} {n}" for t, n in counts["images_per_task"].items()))
    print(f"training manifest written to {path} (celadon train --synthetic {path})")
    return 0


def add_parsers(stages, add, bench_verbs) -> None:
    synth = stages.add_parser("synth", help="synthetic data: selection, captions, LoRA, plans, generation, QC")
    verbs = synth.add_subparsers(dest="verb", required=True, metavar="VERB")
    from celadon.cli.options import config_arguments

    add(verbs, "select", cmd_select, "seven-tier selection of LoRA training images (paper Table 3)",
        config_arguments("celadon.synth.select:SelectConfig", positional=("manifest",), skip=("taxonomy",)))
    add(verbs, "caption", cmd_caption, "write the LoRA folder: images, metadata.jsonl, .txt captions",
        config_arguments("celadon.synth.captions:CaptionConfig", positional=("selection",), skip=("taxonomy",)))
    add(verbs, "qc", cmd_qc, "automatic quality control of synthetic images (per image and FID/KID)",
        config_arguments("celadon.synth.qc:QCConfig", positional=("table",), skip=("taxonomy",),
                         aliases={"model_dir": ["--model"]}))
    add(verbs, "curate", cmd_curate, "QC verdicts + review decisions -> accepted.csv, the manifest training reads",
        config_arguments("celadon.synth.curate:CurateConfig", positional=("qc",), skip=("taxonomy",)))

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
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every usable core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--architecture", default="tiny",
                   help="tiny: the shipped model's widths; small: 6x the parameters (a GPU's work, or CPU hours); "
                        "use a built one with --model PATH")
    p.add_argument("--vae-from", metavar="MODEL",
                   help="reuse this model's VAE, frozen, and train only the text encoder and UNet ('tiny': the "
                        "shipped one; or a pipeline folder; default: train a VAE)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)

    add(verbs, "train-lora", cmd_train_lora, "LoRA fine-tuning (diffusers + peft), resumable",
        config_arguments("celadon.synth.lora:LoraConfig", positional=("data",), skip=("validation_prompts", "cache"),
                         aliases={"learning_rate": ["--lr"]}))
    add(verbs, "plan", cmd_plan, "what to generate: rare combinations and confusion pairs (Datasets A/B)",
        config_arguments("celadon.synth.plan:PlanConfig", positional=("manifest",), skip=("taxonomy",),
                         choices={"preset": ["A", "B"]}))
    add(verbs, "generate", cmd_generate, "generate a plan (DPM++ 2M Karras, CFG, clip skip, LoRA scale)",
        _generation_arguments)

    p = add(bench_verbs, "lora", cmd_bench_lora, "LoRA steps/s: cached latents vs the diffusers recipe")
    p.add_argument("data", help="a folder from `celadon synth caption`")
    p.add_argument("--model", default="tiny", help="tiny, sd15-random (SD 1.5's size, random weights) or a path")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--resolution", type=int, default=0, help="0: the model's own (512 for SD 1.5)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every usable core)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = rank)")
    p.add_argument("--train-text-encoder", action="store_true", help="LoRA on the text encoder too")
    p.add_argument("--json", help=BENCH_JSON_HELP)

    p = add(bench_verbs, "generate", cmd_bench_generate, "images/s: celadon generate vs a plain pipeline loop",
            lambda p: _generation_arguments(p, "out", "shard", "devices", txt2img_only=True))
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--json", help=BENCH_JSON_HELP)
