"""CLI verbs of the classify and evaluate stages: train, evaluate, predict, bench train."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import fields
from pathlib import Path

from celadon.classify.train import PAPER_TASK_WEIGHTS


def _task_weights(text: str | None) -> dict[str, float]:
    if not text:
        return dict(PAPER_TASK_WEIGHTS)
    from celadon.errors import CeladonError

    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise CeladonError(f"--task-weights: {part!r} is not task=number (e.g. glaze=2.0,type=1.5)") from None
    return weights


def _csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_train(args: argparse.Namespace) -> int:
    from celadon.classify.train import TrainConfig, train

    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    values["tasks"] = _csv_list(args.tasks)
    values["synthetic_tasks"] = _csv_list(args.synthetic_tasks)
    values["task_weights"] = _task_weights(args.task_weights)
    values["projection"] = not args.no_projection
    state = train(TrainConfig(**values), resume=args.resume, progress=not args.quiet)
    print(f"best val mean macro-F1 {state['best']:.4f} at epoch {state['best_epoch']}; model in {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from celadon.classify.metrics import compare_confusion_pairs
    from celadon.evaluate.run import EvaluateConfig, evaluate_model, load_metrics

    out = args.out or str(Path(args.model_dir) / f"eval-{args.split}")
    config = EvaluateConfig(args.model_dir, args.splits, out, args.split, args.minority_threshold,
                            cache_dir=args.cache_dir, taxonomy=args.taxonomy)
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

        write_json(Path(out) / "confusion_pair_changes.json", changes)
    print(f"metrics written to {Path(out) / 'metrics.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from celadon.classify.predict import expand_images, load_model, predict_images
    from celadon.classify.train import set_threads
    from celadon.errors import CeladonError
    from celadon.runinfo import atomic_write_text, write_json

    set_threads(0)
    loaded = load_model(args.model_dir)
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
                                     args.threads, args.data, args.cache_dir, args.workers),
                         progress=not args.quiet)
    print(json.dumps(result, indent=2))
    print(f"ratios: cached/compute {result['cached_vs_compute']:.2f} (target >= 0.85), "
          f"cached/naive {result['cached_vs_naive']:.2f} (target >= 2)")
    return 0


def add_parsers(stages, add):
    p = add(stages, "train", cmd_train, "train the multi-task classifier on a split manifest")
    p.add_argument("splits", help="splits.csv (or augmented.csv) with a split column")
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", help="comma-separated tasks (default: all of the taxonomy)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="auto", help="'auto' (offline ImageNet if shipped), 'none', or a file")
    p.add_argument("--no-projection", action="store_true", help="heads directly on backbone features")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--lr-backbone", type=float, default=1e-4)
    p.add_argument("--lr-heads", type=float, default=1e-3)
    p.add_argument("--task-weights", help="e.g. dynasty=1,kiln=1.2,glaze=2,type=1.5 (the default)")
    p.add_argument("--sampler", default="auto",
                   help="'auto' (the taxonomy's confusion task, e.g. glaze; else hierarchical), a task name, "
                        "'hierarchical' or 'none'")
    p.add_argument("--synthetic", help="synthesis metadata table (manifest with qc_pass/review columns)")
    p.add_argument("--synthetic-ratio", type=float, default=0.0, help="share of synthetic draws, e.g. 0.1")
    p.add_argument("--synthetic-tasks", help="tasks synthetic images train (default: all), e.g. type,dynasty")
    p.add_argument("--mixing", default="replace", choices=["replace", "add"],
                   help="replace: synthetic draws replace that share of real ones (equal optimizer steps); "
                        "add: the paper's longer epochs, N_real / (1 - ratio)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the free cores)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--cache-dir")
    p.add_argument("--max-steps-per-epoch", type=int, default=0)
    p.add_argument("--allow-leakage", action="store_true",
                   help="train although copies of one image sit in two splits (refused by default)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")

    p = add(stages, "evaluate", cmd_evaluate, "metrics of a trained model on a split")
    p.add_argument("model_dir")
    p.add_argument("splits")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", help="default: MODEL_DIR/eval-SPLIT")
    p.add_argument("--minority-threshold", type=int, default=50)
    p.add_argument("--compare", help="another evaluation's metrics.json: show confusion-pair changes")
    p.add_argument("--cache-dir")

    p = add(stages, "predict", cmd_predict, "top-k labels per task for images or folders")
    p.add_argument("model_dir")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--csv")
    p.add_argument("--json")

    bench = stages.add_parser("bench", help="benchmarks (not tests): print rates and ratios")
    verbs = bench.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = add(verbs, "train", cmd_bench_train, "training images/s: compute limit vs cached vs naive JPEG loop")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--source-size", type=int, default=1024, help="pixel size of the rendered source photos")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: the free cores)")
    p.add_argument("--data", default="runs/bench-data")
    p.add_argument("--cache-dir", default="runs/bench-cache")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for both pipelines")
    return verbs
