"""CLI verbs of the review stage: serve (the web UI) and export (decisions as CSV)."""

from __future__ import annotations

import argparse


def cmd_serve(args: argparse.Namespace) -> int:
    from celadon.review.app import load_run, serve
    from celadon.taxonomy import load_taxonomy

    review = load_run(args.run_dir, qc=args.qc, real=args.real, taxonomy=load_taxonomy(args.taxonomy))
    serve(review, host=args.host, port=args.port, token=args.token, allowed_hosts=tuple(args.allowed_host or ()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from celadon.errors import CeladonError
    from celadon.review.store import DB_NAME, ReviewStore
    from celadon.runinfo import atomic_write_text

    if not (Path(args.run_dir) / DB_NAME).exists():
        raise CeladonError(f"{args.run_dir}: nothing reviewed yet (no {DB_NAME}); start `celadon review serve`")
    text = ReviewStore(args.run_dir).export_csv()
    out = args.out or str(Path(args.run_dir) / "review.csv")
    atomic_write_text(out, text)
    print(f"{text.count(chr(10)) - 1} decisions written to {out}")
    return 0


def add_parsers(stages, add) -> None:
    review = stages.add_parser("review", help="human review of generated images (web UI)")
    verbs = review.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = add(verbs, "serve", cmd_serve, "review a generation run in the browser; decisions go to its SQLite store")
    p.add_argument("run_dir", help="a `celadon synth generate` output folder")
    p.add_argument("--qc", help="its `celadon synth qc` folder (shows QC flags; default RUN_DIR/qc.csv if any)")
    p.add_argument("--real", help="the real splits.csv: reference photos of each combination beside the images")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", help="shared secret every request must carry (required when binding beyond localhost)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a host name browsers may use to reach the server besides localhost (repeatable)")
    p = add(verbs, "export", cmd_export, "current decisions as CSV (item_id, review, reason, reviewer, time)")
    p.add_argument("run_dir")
    p.add_argument("--out", help="default: RUN_DIR/review.csv")
