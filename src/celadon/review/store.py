"""Review decisions in SQLite (WAL) inside the run directory: an append-only history, the latest row per
image is its current decision. Concurrent reviewers never lose a write: each decision is one short
`BEGIN IMMEDIATE` transaction, and the history keeps every reviewer's rows."""

from __future__ import annotations

import csv
import functools
import io
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from celadon.errors import CeladonError

DB_NAME = "review.sqlite"
DECISIONS = ("accepted", "rejected", "pending")  # "pending" is what undo returns an image to
GENERAL_REASONS = ("modern artefact", "damaged/cracked", "low quality", "other")
REASONS = ("wrong dynasty", "wrong kiln", "wrong glaze", "wrong type", *GENERAL_REASONS)  # porcelain's


def rejection_reasons(task_names: list[str]) -> tuple[str, ...]:
    """What a reviewer can reject an image for: a wrong label of any task of the taxonomy, or a general flaw."""
    return (*(f"wrong {task}" for task in task_names), *GENERAL_REASONS)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT,
    note TEXT,
    reviewer TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_item ON decisions(item_id, id);
"""


@dataclass(frozen=True)
class Decision:
    item_id: str
    decision: str
    reason: str | None
    note: str | None
    reviewer: str
    at: str


def _readable(method):
    """A damaged or foreign review.sqlite becomes one line naming the file and what to do, not a traceback."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise CeladonError(f"{self.path}: not a readable review database ({exc}); move it aside to start the "
                               "review afresh, or restore it from a backup") from None

    return wrapper


class ReviewStore:
    @_readable
    def __init__(self, run_dir: str | Path, reasons: tuple[str, ...] = REASONS):
        self.path, self.reasons = Path(run_dir) / DB_NAME, reasons
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        return db

    @_readable
    def decide(self, items: list[str], decision: str, reviewer: str, reason: str | None = None,
               note: str | None = None) -> list[Decision]:
        if decision not in DECISIONS:
            raise CeladonError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        if decision == "rejected" and reason not in self.reasons:
            raise CeladonError(f"a rejection needs a reason: one of {', '.join(self.reasons)}")
        if not reviewer.strip():
            raise CeladonError("a decision needs the reviewer's name")
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        rows = [Decision(i, decision, reason if decision == "rejected" else None, note or None, reviewer.strip(), at)
                for i in items]
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO decisions (item_id, decision, reason, note, reviewer, at) VALUES (?,?,?,?,?,?)",
                           [(r.item_id, r.decision, r.reason, r.note, r.reviewer, r.at) for r in rows])
            db.execute("COMMIT")
        finally:
            db.close()
        return rows

    @_readable
    def current(self) -> dict[str, Decision]:
        """The latest decision per image (last write wins)."""
        with self._connect() as db:
            rows = db.execute("SELECT item_id, decision, reason, note, reviewer, at FROM decisions d WHERE id = "
                              "(SELECT MAX(id) FROM decisions WHERE item_id = d.item_id)").fetchall()
        return {r[0]: Decision(*r) for r in rows if r[1] != "pending"}

    @_readable
    def history(self, item_id: str | None = None) -> list[Decision]:
        query = "SELECT item_id, decision, reason, note, reviewer, at FROM decisions"
        with self._connect() as db:
            rows = (db.execute(query + " WHERE item_id = ? ORDER BY id", (item_id,)) if item_id
                    else db.execute(query + " ORDER BY id")).fetchall()
        return [Decision(*r) for r in rows]

    def export_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["item_id", "review", "reason", "note", "reviewer", "at"])
        for d in sorted(self.current().values(), key=lambda d: d.item_id):
            writer.writerow([d.item_id, d.decision, d.reason or "", d.note or "", d.reviewer, d.at])
        return buffer.getvalue()


def rejected_items(run_dir: str | Path) -> set[str]:
    """Item ids whose current review decision is `rejected` (empty when the run was never reviewed)."""
    if not (Path(run_dir) / DB_NAME).exists():
        return set()
    return {i for i, d in ReviewStore(run_dir).current().items() if d.decision == "rejected"}
