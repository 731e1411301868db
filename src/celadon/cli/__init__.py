"""`celadon <stage> <verb>`: a thin layer over the library; every error the user can fix is one line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from celadon.data.images import DEFAULT_MAX_PIXELS
from celadon.errors import CeladonError, DataProblems

WARNINGS_SHOWN = 20  # per kind, unless --all
INTERNAL_ERROR_EXIT = 3  # 1: the data has problems; 2: usage or setup; 3: a bug in celadon
PRESET_NAMES = "demo, calibrate, choose-synthesis, close-gap, confirm, paper"  # configs/*.yaml; a test keeps them equal


def name_value_pairs(items: list[str], what: str, example: str) -> dict[str, str]:
    """`NAME=VALUE` arguments as a mapping; a malformed one is a one-line usage error."""
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise CeladonError(f"{item!r}: give {what}, e.g. {example}")
        pairs[name] = value
    return pairs


def _row_order(problem) -> tuple:
    """File-level problems first, then by row number, so a row's problems are read together."""
    number = problem.where.rsplit(" ", 1)[-1]
    return (problem.source, int(number) if number.isdigit() else -1)


def print_problems(problems: list, max_errors: int | None, all_warnings: bool = False, file=None) -> None:
    """Every error line (up to --max-errors), the first warnings of each kind, then one summary line per kind."""
    from celadon.data.check import summarise

    file = file or sys.stdout
    errors = sorted((p for p in problems if p.severity == "error"), key=_row_order)
    for problem in errors[:max_errors]:
        print(problem, file=file)
    if max_errors is not None and len(errors) > max_errors:
        print(f"... {len(errors) - max_errors:,} more errors not shown (raise --max-errors to see them)", file=file)
    shown: dict[str, int] = {}
    for problem in problems:
        if problem.severity != "error":
            shown[problem.kind] = shown.get(problem.kind, 0) + 1
            if all_warnings or shown[problem.kind] <= WARNINGS_SHOWN:
                print(problem, file=file)
    for kind, count in shown.items():
        if count > WARNINGS_SHOWN and not all_warnings:
            print(f"... {count - WARNINGS_SHOWN} more {kind} warnings not shown (--all or --json lists them)",
                  file=file)
    summary = summarise(problems)
    if len(errors) > 1 and summary:
        print("summary:", file=file)
        for line in summary:
            print(f"  {line}", file=file)


def _run_overrides(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    if args.out:
        overrides["out"] = args.out
    if args.device:
        overrides["device"] = args.device
    if args.seeds:
        try:
            overrides["seeds"] = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise CeladonError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2") from None
    return overrides


def cmd_run(args: argparse.Namespace) -> int:
    """`celadon run CONFIG` and `celadon demo` (= `celadon run demo`)."""
    from celadon.experiment.study import run_study

    settings = list(args.set)
    if args.gpus:  # generation: one concurrent shard per GPU; trainings: one process per GPU; the rest: one GPU
        gpus = ",".join(f"cuda:{i}" for i in range(args.gpus))
        settings += [f"synthesis.generate.devices=[{gpus}]", f"devices=[{gpus}]"]
    if args.dry_run:
        from celadon.experiment.study import print_plan

        print_plan(args.config, _run_overrides(args), settings, args.images)
        return 0
    run_study(args.config, _run_overrides(args), settings, progress=not args.quiet)
    return 0


def cmd_bench_estimate(args: argparse.Namespace) -> int:
    """`celadon bench estimate CONFIG`: the study's workload x the measured rates, on each device count asked."""
    from celadon.experiment.config import load_study
    from celadon.experiment.estimate import estimate, mismatches, read_rates, study_workload

    config = load_study(args.config, {}, list(args.set))
    try:
        train, val, test = (int(n) for n in args.images.split(","))
        devices = [int(n) for n in args.gpus.split(",")]
    except ValueError:
        raise CeladonError(f"--images {args.images!r} / --gpus {args.gpus!r}: give integers, e.g. --images "
                           "5068,1392,801 --gpus 1,8") from None
    work = study_workload(config, train, val, test, args.train_rows)
    rates = read_rates(args.train, args.lora, args.generate)
    print(f"{config.name}: {len(work.trainings)} classifier trainings ({sum(work.trainings):,} images trained on), "
          f"LoRA {work.lora_steps} steps, {sum(n for n, _ in work.generated.values()):,} images generated")
    for note in mismatches(config, rates):
        print(f"note: {note}")
    columns = {n: estimate(work, rates, n) for n in devices}
    print(f"{'':<24}" + "".join(f"{f'{n} device' + ('s' if n > 1 else ''):>14}" for n in devices))
    for part in columns[devices[0]]:
        print(f"{part:<24}" + "".join(_duration(columns[n][part]) for n in devices))
    return 0


def cmd_bench_cli(args: argparse.Namespace) -> int:
    """`celadon bench cli`: start time and memory of light commands against their budget."""
    from celadon.cli.startup import bench_cli

    result = bench_cli(args.repeats)
    for name, figures in result.items():
        print(f"{name}: {figures['seconds']:.2f} s (median of {args.repeats}), peak {figures['peak_mb']:.0f} MB; "
              f"ratios to the budget: time {figures['time_vs_budget']:.2f}, memory {figures['memory_vs_budget']:.2f}")
    from celadon.cli.options import write_bench_json

    write_bench_json(args.json, result, repeats=args.repeats)
    return 0


def cmd_bench_stats(args: argparse.Namespace) -> int:
    """`celadon bench stats`: type-I error and coverage of the study's statistics at 3 and 10 seeds."""
    from celadon.evaluate.simulate import binomial_interval, simulate

    rows = [simulate(n, args.images, args.seed_sd, delta, args.reps) for n in (3, 10) for delta in (0.0, args.delta)]
    print(f"{args.reps} simulated studies each, {args.images} test images, seed sd {args.seed_sd} (logit); "
          "rates with 95% Clopper-Pearson intervals")
    for r in rows:
        def rate(key: str, r=r) -> str:
            low, high = binomial_interval(r[key], r["reps"])
            return f"{r[key]:.3f} [{low:.3f}, {high:.3f}]"

        what = "type-I error" if r["delta_logit"] == 0 else f"power at +{r['population_difference']:.3f}"
        print(f"{r['seeds']:>2} seeds, {what} (seed sd of top-1 {r['seed_sd_of_top1']:.3f}): verdict rule "
              f"{rate('verdict_rejection_rate')}, paired t {rate('t_rejection_rate')}, pooled McNemar "
              f"{rate('pooled_mcnemar_rejection_rate')}; coverage: t {rate('t_coverage')}, seeds + images "
              f"{rate('combined_coverage')}")
        if "predicted_verdict_power" in r:  # what the report's power figures would have said
            print(f"   power predicted from the variances: verdict rule {r['predicted_verdict_power']:.3f}, "
                  f"seeds only {r['predicted_seeds_only_power']:.3f}")
    from celadon.cli.options import write_bench_json

    write_bench_json(args.json, {"rows": rows}, reps=args.reps, images=args.images, seed_sd=args.seed_sd)
    return 0


def _duration(seconds: float) -> str:
    return f"{seconds / 60:>10.1f} min" if seconds < 7200 else f"{seconds / 3600:>12.1f} h"


def cmd_report(args: argparse.Namespace) -> int:
    from celadon.report.html import rebuild_report

    print(f"report: {rebuild_report(args.out).resolve()}")
    return 0


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose heavy flags are added only when its command runs or shows its help.

    A stage's flags come from its config dataclass, and most of those live beside torch code: building every
    command's flags up front imported torch, diffusers and the rest for `celadon --help` (4 s, 1 GB).
    `configure(parser)` runs the first time this parser parses or formats its help, never otherwise."""

    def __init__(self, *args, configure: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._configure = configure

    def _configured(self) -> None:
        if self._configure is not None:
            configure, self._configure = self._configure, None
            configure(self)
            _show_defaults(self)

    def parse_known_args(self, args=None, namespace=None):
        self._configured()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._configured()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="celadon", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def add(sub, name: str, func: Callable[[argparse.Namespace], int], help_text: str,
            configure: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.ArgumentParser:
        """A command; `configure` adds the flags that need a heavy import (see CommandParser)."""
        p = sub.add_parser(name, help=help_text, description=help_text, configure=configure)
        p.set_defaults(func=func)
        p.add_argument("--taxonomy", help="taxonomy YAML (default: the paper's porcelain vocabulary)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--max-errors", type=int, metavar="N",
                       help="print at most N per-row errors (the summary still counts all)")
        p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                       help="refuse images over N pixels (decompression bombs)")
        return p

    demo = add(stages, "demo", cmd_run, "the whole study on the embedded procedural porcelain set (preset demo)")
    demo.set_defaults(config="demo")
    run = add(stages, "run", cmd_run, "run a study YAML: data, synthesis, every arm x seed, report.html")
    run.add_argument("config", help=f"a YAML file, or a shipped preset: {PRESET_NAMES}")
    report = add(stages, "report", cmd_report, "rebuild report.html from a study's results.json (nothing re-run)")
    report.add_argument("out", help="the study folder (holds results.json)")
    for p in (demo, run):
        p.add_argument("--out", help="output folder (default: the config's out)")
        p.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
        p.add_argument("--device", help="auto (the GPU when there is one; the default), cpu, cuda or cuda:N: "
                                        "every stage that runs a network")
        p.add_argument("--gpus", type=int, metavar="N",
                       help="use N GPUs: generation one shard each, the arms' trainings one process each")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config setting, e.g. --set classifier.epochs=10 (repeatable)")
        p.add_argument("--dry-run", action="store_true",
                       help="print every stage, reused or to run, and the work to run; run and write nothing")
        p.add_argument("--images", metavar="TRAIN,VAL,TEST",
                       help="with --dry-run: originals per split to count the work on, before the split exists")

    from celadon.cli import classify, data, review, synth

    bench_verbs = classify.add_parsers(stages, add)
    synth.add_parsers(stages, add, bench_verbs)
    p = add(bench_verbs, "estimate", cmd_bench_estimate,
            "a study's wall time on 1..N devices from its workload and the benchmarks' --json rates")
    p.add_argument("config", help=f"a study YAML, or a shipped preset: {PRESET_NAMES}")
    p.add_argument("--images", required=True, metavar="TRAIN,VAL,TEST",
                   help="original images per split (the paper's: 5068,1392,801)")
    p.add_argument("--train-rows", type=int, default=0, help="training rows after offline augmentation (0: TRAIN)")
    p.add_argument("--train", required=True, metavar="JSON", help="`bench train --json` at the study's classifier "
                                                                   "backbone, image size and batch")
    p.add_argument("--lora", metavar="JSON", help="`bench lora --json` at the study's LoRA batch and resolution")
    p.add_argument("--generate", metavar="JSON", help="`bench generate --json` at the study's resolution")
    p.add_argument("--gpus", default="1", help="comma-separated device counts, e.g. 1,8")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config setting")
    p = add(bench_verbs, "cli", cmd_bench_cli, "start time and memory of `celadon --help` and `data validate` "
            "as new processes, against their budget (1 s, 300 MB)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the figures here")
    p = add(bench_verbs, "stats", cmd_bench_stats, "type-I error and interval coverage of the study's statistics "
            "at 3 and 10 seeds, by simulation")
    p.add_argument("--reps", type=int, default=400, help="simulated studies per setting")
    p.add_argument("--images", type=int, default=271, help="test images (the demo's 271)")
    p.add_argument("--seed-sd", type=float, default=0.15, help="seed-to-seed sd of the logit (0.15: the demo's spread)")
    p.add_argument("--delta", type=float, default=0.2, help="a true effect on the logit scale, for power and coverage")
    p.add_argument("--json", help="also write the figures here")
    review.add_parsers(stages, add)

    data.add_parsers(stages, add)
    _show_defaults(parser)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append '(default: X)' to every option with a default worth knowing, in every subcommand's --help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _show_defaults(sub)
        elif (action.option_strings and action.default is not None and action.default is not False
              and action.default != argparse.SUPPRESS
              and "default" not in (action.help or "") and action.help != argparse.SUPPRESS):
            action.help = f"{action.help or ''} (default: {action.default})".strip()


def _version() -> str:
    from celadon import __version__

    return f"celadon {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "max_pixels", None) is not None:
        from celadon.data.images import set_max_pixels

        try:
            set_max_pixels(args.max_pixels)
        except CeladonError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if getattr(args, "quiet", False):  # the Hugging Face libraries' own bars (loading, saving weights) too
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    start = time.perf_counter()
    try:
        code = args.func(args)
    except DataProblems as exc:
        print_problems(exc.problems, getattr(args, "max_errors", None), file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except CeladonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to continue (train: add --resume)", file=sys.stderr)
        return 130
    except OSError as exc:  # permissions, full disk: the user can fix these, a traceback does not help
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; free space or fix permissions, then re-run the same command",
              file=sys.stderr)
        return 2
    except Exception as exc:  # a bug in celadon, not in the data: one line, and the traceback on request
        if os.environ.get("CELADON_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc}; this is a bug in celadon, please report it with the "
              "output of the same command run with CELADON_DEBUG=1", file=sys.stderr)
        return INTERNAL_ERROR_EXIT
    if not getattr(args, "quiet", False) and args.stage != "demo":
        print(f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return code

