"""`celadon review serve RUN_DIR`: a small web app for the paper's manual review of generated images.

Server-rendered page + a little JavaScript; FastAPI on uvicorn; decisions in the run's SQLite store.
Security: binds 127.0.0.1 unless told otherwise; images are addressed by item id (synthetic) or index
(real references), never by path, and a synthetic file must resolve inside the run directory (symlinks out
are refused); every state-changing request is a POST carrying the page's CSRF token; with `token` set,
every request needs it (once as `?token=`, then a cookie).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from fastapi import FastAPI, HTTPException, Request  # module level: route annotations must resolve
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse

from celadon.errors import CeladonError
from celadon.review.store import DECISIONS, REASONS, Decision, ReviewStore

TASKS = ("dynasty", "kiln", "glaze", "type")
REFERENCES_PER_COMBINATION = 3


@dataclass
class ReviewRun:
    run_dir: Path
    items: pd.DataFrame  # one row per generated image: item_id, path, labels, prompt, seed, source, qc_*
    references: list[Path] = field(default_factory=list)
    references_by_combo: dict[str, list[int]] = field(default_factory=dict)


def combination(row) -> str:
    return " + ".join(str(row.get(t)) for t in ("glaze", "type") if pd.notna(row.get(t)))


def load_run(run_dir: str | Path, qc: str | Path | None = None, real: str | Path | None = None) -> ReviewRun:
    run_dir = Path(run_dir)
    table_path = run_dir / "generated.csv"
    if not table_path.exists():
        raise CeladonError(f"{run_dir}: no generated.csv; review a folder written by `celadon synth generate`")
    items = pd.read_csv(table_path, dtype={"item_id": str})
    if items.empty:
        raise CeladonError(f"{table_path}: no generated images to review")
    qc_path = Path(qc) / "qc.csv" if qc and Path(qc).is_dir() else (Path(qc) if qc else run_dir / "qc.csv")
    if qc and not qc_path.exists():
        raise CeladonError(f"--qc {qc}: no qc.csv there; run `celadon synth qc` first")
    if qc_path.exists():
        checks = pd.read_csv(qc_path, dtype={"item_id": str})[["item_id", "qc_pass", "qc_reasons"]]
        items = items.merge(checks, on="item_id", how="left")
    for column in ("qc_pass", "qc_reasons", "source"):
        if column not in items:
            items[column] = None
    items["combination"] = [combination(r) for r in items.to_dict("records")]
    review = ReviewRun(run_dir, items.reset_index(drop=True))
    if real:
        _add_references(review, Path(real))
    return review


def _add_references(review: ReviewRun, manifest: Path) -> None:
    if not manifest.exists():
        raise CeladonError(f"--real {manifest} does not exist; give the real splits.csv or manifest")
    frame = pd.read_csv(manifest)
    if "split" in frame:
        frame = frame[frame["split"] == "train"]
    wanted = set(review.items["combination"])
    for row in frame.to_dict("records"):
        combo = combination(row)
        if combo in wanted and len(review.references_by_combo.get(combo, [])) < REFERENCES_PER_COMBINATION:
            review.references_by_combo.setdefault(combo, []).append(len(review.references))
            review.references.append((manifest.parent / str(row["path"])).resolve())


def create_app(review: ReviewRun, token: str | None = None):
    from celadon.review.page import render_page

    app = FastAPI(title="celadon review", docs_url=None, redoc_url=None, openapi_url=None)
    store = ReviewStore(review.run_dir)
    csrf = secrets.token_urlsafe(32)
    run_root = review.run_dir.resolve()
    paths = dict(zip(review.items["item_id"], review.items["path"], strict=True))

    @app.middleware("http")
    async def access(request: Request, call_next):
        if token:
            given = request.query_params.get("token") or request.cookies.get("celadon_review")
            if not given or not secrets.compare_digest(given, token):
                return PlainTextResponse("access token required: open the link printed by `celadon review serve`",
                                         status_code=401)
            if "token" in request.query_params:  # move it into a cookie and out of the address bar
                response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
                response.set_cookie("celadon_review", token, httponly=True, samesite="strict")
                return response
        if request.method == "POST" and not secrets.compare_digest(request.headers.get("x-csrf-token", ""), csrf):
            return PlainTextResponse("missing or wrong CSRF token: reload the page", status_code=403)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    @app.get("/", response_class=HTMLResponse)
    def page(combo: str = "", source: str = "", qc: str = "", decision: str = ""):
        current = store.current()
        return render_page(review, current, progress(review, current), csrf,
                           {"combo": combo, "source": source, "qc": qc, "decision": decision})

    @app.get("/image/synthetic/{item_id}")
    def synthetic_image(item_id: str):
        if item_id not in paths:
            raise HTTPException(404, "no such item")
        path = (run_root / str(paths[item_id])).resolve()
        if not path.is_relative_to(run_root) or not path.is_file():
            raise HTTPException(403, "image is outside the run directory")
        return FileResponse(path)

    @app.get("/image/real/{index}")
    def real_image(index: int):
        if not 0 <= index < len(review.references) or not review.references[index].is_file():
            raise HTTPException(404, "no such reference")
        return FileResponse(review.references[index])

    @app.post("/api/decide")
    async def decide(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "the body must be JSON: {items, decision, reason, note, reviewer}") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "the body must be a JSON object")
        items = [str(i) for i in body.get("items", [])]
        unknown = [i for i in items if i not in paths]
        if not items or unknown:
            raise HTTPException(400, f"unknown item(s): {', '.join(unknown) or 'none given'}")
        try:
            rows = store.decide(items, str(body.get("decision")), str(body.get("reviewer", "")),
                                body.get("reason"), body.get("note"))
        except CeladonError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"decisions": [row.__dict__ for row in rows], "progress": progress(review, store.current())}

    @app.get("/api/state")
    def state():
        current = store.current()
        return {"decisions": {k: v.__dict__ for k, v in current.items()},
                "progress": progress(review, current), "reasons": REASONS, "choices": DECISIONS}

    @app.get("/export.csv")
    def export():
        return PlainTextResponse(store.export_csv(), media_type="text/csv",
                                 headers={"Content-Disposition": "attachment; filename=review.csv"})

    return app


def progress(review: ReviewRun, current: dict[str, Decision]) -> dict:
    """Reviewed / total and pass rate, overall and per combination, from the current decisions."""
    per_combo = {}
    for combo, group in review.items.groupby("combination"):
        decided = [current[i].decision for i in group["item_id"] if i in current]
        per_combo[combo] = {"total": len(group), "reviewed": len(decided),
                            "pass_rate": decided.count("accepted") / len(decided) if decided else None}
    reviewed = sum(1 for i in review.items["item_id"] if i in current)
    accepted = sum(1 for i in review.items["item_id"] if i in current and current[i].decision == "accepted")
    return {"total": len(review.items), "reviewed": reviewed,
            "pass_rate": accepted / reviewed if reviewed else None, "combinations": per_combo}


def serve(review: ReviewRun, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {host} exposes the review to your network"
              + ("" if token else "; pass --token to require a shared secret"))
    link = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/" + (f"?token={token}" if token else "")
    print(f"reviewing {len(review.items)} images from {review.run_dir}: open {link}", flush=True)
    uvicorn.run(create_app(review, token), host=host, port=port, log_level="warning")
