"""CLI verbs of the classify and evaluate stages: train, evaluate, predict, bench train."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import replace
from pathlib import Path

from celadon.cli.options import BENCH_JSON_HELP, DEVICE_HELP, config_arguments, write_bench_json


def cmd_train(args: argparse.Namespace) -> int:
    from celadon.classify.train import TrainConfig, train
    from celadon.cli.options import config_from_args

    config = config_from_args(TrainConfig, args, "train", required=("splits",))
    state = train(config, resume=args.resume, progress=not args.quiet)
    print(f"best val mean macro-F1 {state['best']:.4f} at epoch {state['best_epoch']}; model in {config.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from celadon.classify.metrics import compare_confusion_pairs
    from celadon.cli.options import config_from_args
    from celadon.evaluate.run import EvaluateConfig, evaluate_model, load_metrics

    config = config_from_args(EvaluateConfig, args, "evaluate", required=("model_dir", "splits"))
    if not config.out:
        config = replace(config, out=str(Path(config.model_dir) / f"eval-{config.split}"))
    result = evaluate_model(config, progress=not args.quiet)
    print(f"{'task':<10}{'n':>6}{'top1':>8}{'top5':>8}{'F1 mac':>8}{'F1 wt':>8}{'F1 min':>8}{'F1 maj':>8}")
    for task, m in result["tasks"].items():
        mm = m.get("minority_majority", {})
        values = [m["top1"], m["top5"], m["f1_macro"], m["f1_weighted"],
                  mm.get("minority", {}).get("f1_mean"), mm.get("majority", {}).get("f1_mean")]
        print(f"{task:<10}{m['n']:>6}" + "".join(f"{'—' if v is None else f'{v:.3f}':>8}" for v in values))
    print("(— : undefined: top-5 of a task with 5 classes or fewer, or no classes in that group)")
    print(f"mean macro-F1 over tasks: {result['mean_f1_macro']:.4f}  (backbone: {result['pretrained']})")
    if args.compare:
        changes = compare_confusion_pairs(load_metrics(args.compare), result)
        for task, rows in changes.items():
            shown = ", ".join(f"{'/'.join(r['pair'])} {r['before']}->{r['after']}" for r in rows[:5])
            print(f"confusion pairs {task}: {shown}")
        from celadon.runinfo import write_json

        write_json(Path(config.out) / "confusion_pair_changes.json", changes)
    print(f"metrics written to {Path(config.out) / 'metrics.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from celadon.classify.predict import expand_images, load_model, predict_images
    from celadon.classify.train import set_threads
    from celadon.device import resolve_device
    from celadon.errors import CeladonError
    from celadon.runinfo import atomic_write_text, write_json

    set_threads(0)
    loaded = load_model(args.model_dir, resolve_device(args.device))
    paths = expand_images(args.images)
    if not paths:
        raise CeladonError(f"no images found in {' '.join(args.images)}")
    results, errors = predict_images(loaded, paths, args.top_k)
    for row in results:
        labels = "  ".join(f"{task}: " + ", ".join(f"{c} {p:.2f}" for c, p in row[task])
                           for task in loaded.model.task_names)
        print(f"{row['image']}  {labels}")
    for line in errors:
        print(line, file=sys.stderr)
    if args.json:
        write_json(args.json, results)
    if args.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image", "task", "rank", "label", "probability"])
        for row in results:
            for task in loaded.model.task_names:
                for rank, (label, prob) in enumerate(row[task], 1):
                    writer.writerow([row["image"], task, rank, label, f"{prob:.6f}"])
        atomic_write_text(args.csv, buffer.getvalue())
    print(f"{len(results)} predicted, {len(errors)} unreadable", file=sys.stderr)
    return 1 if errors else 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from celadon.classify.bench import BenchConfig, bench_train

    result = bench_train(BenchConfig(args.backbone, args.image_size, args.batch_size, args.steps, args.source_size,
                                     args.threads, args.data, args.cache_dir, args.workers, args.device,
                                     args.augment_on, args.train_depthwise, args.freeze_stages),
                         progress=not args.quiet)
    print(json.dumps(result, indent=2))
    write_bench_json(args.json, result)  # the result names its own settings
    print(f"ratios: cached/compute {result['cached_vs_compute']:.2f} (target >= 0.85), "
          f"cached/naive {result['cached_vs_naive']:.2f} (target >= 2)")
    return 0


def _bench_train_arguments(p: argparse.ArgumentParser) -> None:
    from celadon.classify.device_batches import AUGMENT_ON

    p.add_argument("--augment-on", default="auto", choices=AUGMENT_ON,
                   help="the cached path's augmentation (auto: on the device on a GPU, in the loader on the CPU)")


def add_parsers(stages, add):
    p = add(stages, "train", cmd_train, "train the multi-task classifier on a split manifest", config_arguments(
        "celadon.classify.train:TrainConfig", positional=("splits",), skip=("taxonomy",),
        choices={"mixing": ["replace", "add"]}))
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")

    p = add(stages, "evaluate", cmd_evaluate, "metrics of a trained model on a split", config_arguments(
        "celadon.evaluate.run:EvaluateConfig", positional=("model_dir", "splits"), skip=("taxonomy",),
        choices={"split": ["train", "val", "test"]}))
    p.add_argument("--compare", help="another evaluation's metrics.json: show confusion-pair changes")

    p = add(stages, "predict", cmd_predict, "top-k labels per task for images or folders")
    p.add_argument("model_dir")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--csv")
    p.add_argument("--json")

    bench = stages.add_parser("bench", help="benchmarks (not tests): print rates and ratios")
    verbs = bench.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = add(verbs, "train", cmd_bench_train, "training images/s: compute limit vs cached vs naive JPEG loop",
            _bench_train_arguments)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--source-size", type=int, default=1024, help="pixel size of the rendered source photos")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every usable core)")
    p.add_argument("--data", default="runs/bench-data")
    p.add_argument("--cache-dir", default="runs/bench-cache")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for both pipelines")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--train-depthwise", action=argparse.BooleanOptionalAction, default=True,
                   help="--no-train-depthwise freezes the depthwise kernels, as `train` does (the demo does)")
    p.add_argument("--freeze-stages", type=int, default=0, help="the backbone's first N stages frozen, as `train`")
    p.add_argument("--json", help=BENCH_JSON_HELP)
    return verbs
