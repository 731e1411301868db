"""`celadon review serve RUN_DIR`: a small web app for the paper's manual review of generated images.

Server-rendered page + a little JavaScript; FastAPI on uvicorn; decisions in the run's SQLite store.
Security: binds 127.0.0.1 unless told otherwise (anything else needs a token); every request must name a host
it serves (a DNS-rebinding page names its own), and a POST from a foreign Origin/Referer is refused; images are
addressed by item id (synthetic) or index (real references), never by path, only image files the run lists are
served, and they must resolve inside the run directory (symlinks out are refused); every state-changing
request is a POST carrying the page's CSRF token, with a typed, size-capped JSON body; with `token` set, every
request needs it (once as `?token=`, then a cookie).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import pandas as pd
from fastapi import FastAPI, HTTPException, Request  # module level: route annotations must resolve
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from celadon.errors import CeladonError
from celadon.review.store import DECISIONS, Decision, ReviewStore, rejection_reasons
from celadon.taxonomy import Taxonomy, load_taxonomy

REFERENCES_PER_COMBINATION = 3
LOOPBACK = ("127.0.0.1", "localhost", "::1")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_BODY = 64 * 1024  # bytes of a decision request: ids of a whole run, a reason and a note


class DecideBody(BaseModel):
    """A review decision as the page sends it; anything else is a 400 naming the field."""

    model_config = ConfigDict(strict=True, extra="forbid")
    items: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=5000)
    decision: Literal["accepted", "rejected", "pending"]
    reason: str | None = Field(default=None, max_length=100)
    note: str | None = Field(default=None, max_length=2000)
    reviewer: str = Field(min_length=1, max_length=100)


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison that also takes non-ASCII input (compare_digest refuses such str)."""
    return secrets.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def _hostname(value: str) -> str:
    """The host of a Host header or an Origin/Referer URL, lower-case, without port or IPv6 brackets."""
    try:
        netloc = urlsplit(value if "//" in value else f"//{value}").hostname
    except ValueError:  # e.g. an unbalanced IPv6 bracket: no host this server answers to
        return ""
    return (netloc or "").lower()


@dataclass
class ReviewRun:
    run_dir: Path
    items: pd.DataFrame  # one row per generated image: item_id, path, labels, prompt, seed, source, qc_*
    references: list[Path] = field(default_factory=list)
    references_by_combo: dict[str, list[int]] = field(default_factory=dict)
    taxonomy: Taxonomy = field(default_factory=load_taxonomy)

    @property
    def reasons(self) -> tuple[str, ...]:
        return rejection_reasons(self.taxonomy.task_names)


def combination(row, taxonomy: Taxonomy) -> str:
    """How the page groups images: the labels of the taxonomy's combination role (glaze + type)."""
    return " + ".join(str(row.get(t)) for t in taxonomy.combination if pd.notna(row.get(t)))


def load_run(run_dir: str | Path, qc: str | Path | None = None, real: str | Path | None = None,
             taxonomy: Taxonomy | None = None) -> ReviewRun:
    run_dir = Path(run_dir)
    taxonomy = taxonomy or load_taxonomy()
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
    if "purpose" not in items and "source" in items:  # runs planned before the column was named `purpose`
        items["purpose"] = items["source"]
    for column in ("qc_pass", "qc_reasons", "purpose"):
        if column not in items:
            items[column] = None
    items["combination"] = [combination(r, taxonomy) for r in items.to_dict("records")]
    review = ReviewRun(run_dir, items.reset_index(drop=True), taxonomy=taxonomy)
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
        combo = combination(row, review.taxonomy)
        if combo in wanted and len(review.references_by_combo.get(combo, [])) < REFERENCES_PER_COMBINATION:
            review.references_by_combo.setdefault(combo, []).append(len(review.references))
            review.references.append((manifest.parent / str(row["path"])).resolve())


def create_app(review: ReviewRun, token: str | None = None, allowed_hosts: tuple[str, ...] = ()):
    """The review app. `allowed_hosts`: host names besides the loopback ones that requests may address (the
    bound address, a name colleagues use); any other Host header is refused (DNS rebinding)."""
    from celadon.review.page import render_page

    app = FastAPI(title="celadon review", docs_url=None, redoc_url=None, openapi_url=None)
    store = ReviewStore(review.run_dir, review.reasons)
    csrf = secrets.token_urlsafe(32)
    run_root = review.run_dir.resolve()
    paths = dict(zip(review.items["item_id"], review.items["path"], strict=True))
    hosts = {*LOOPBACK, *(_hostname(h) for h in allowed_hosts)}

    @app.middleware("http")
    async def access(request: Request, call_next):
        if _hostname(request.headers.get("host", "")) not in hosts:
            return PlainTextResponse("this server does not answer to that host name; open the address printed by "
                                     "`celadon review serve` (or pass --allowed-host)", status_code=400)
        if request.method == "POST":
            source = request.headers.get("origin") or request.headers.get("referer")
            if source is not None and _hostname(source) not in hosts:
                return PlainTextResponse("cross-site request refused", status_code=403)
        if token:
            given = request.query_params.get("token") or request.cookies.get("celadon_review")
            if not given or not _same(given, token):
                return PlainTextResponse("access token required: open the link printed by `celadon review serve`",
                                         status_code=401)
            if "token" in request.query_params:  # move it into a cookie and out of the address bar
                response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
                response.set_cookie("celadon_review", token, httponly=True, samesite="strict")
                return response
        if request.method == "POST" and not _same(request.headers.get("x-csrf-token", ""), csrf):
            return PlainTextResponse("missing or wrong CSRF token: reload the page", status_code=403)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    @app.get("/", response_class=HTMLResponse)
    def page(combo: str = "", purpose: str = "", qc: str = "", decision: str = ""):
        current = store.current()
        return render_page(review, current, progress(review, current), csrf,
                           {"combo": combo, "purpose": purpose, "qc": qc, "decision": decision})

    @app.get("/image/synthetic/{item_id}")
    def synthetic_image(item_id: str):
        if item_id not in paths:
            raise HTTPException(404, "no such item")
        listed = run_root / str(paths[item_id])
        if listed.suffix.lower() not in IMAGE_SUFFIXES:
            raise HTTPException(403, "not an image file")
        path = listed.resolve()
        if not path.is_relative_to(run_root) or path.suffix.lower() not in IMAGE_SUFFIXES:
            raise HTTPException(403, "image is outside the run directory or not an image file")
        if not path.is_file():
            raise HTTPException(404, "the image file is missing")
        return FileResponse(path)

    @app.get("/image/real/{index}")
    def real_image(index: int):
        if not 0 <= index < len(review.references) or not review.references[index].is_file():
            raise HTTPException(404, "no such reference")
        return FileResponse(review.references[index])

    @app.post("/api/decide")
    async def decide(request: Request):
        body = await _decide_body(request)
        unknown = [i for i in body.items if i not in paths]
        if unknown:
            raise HTTPException(400, f"unknown item(s): {', '.join(unknown[:5])}")
        try:
            rows = store.decide(body.items, body.decision, body.reviewer, body.reason, body.note)
        except CeladonError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"decisions": [row.__dict__ for row in rows], "progress": progress(review, store.current())}

    @app.get("/api/state")
    def state():
        current = store.current()
        return {"decisions": {k: v.__dict__ for k, v in current.items()},
                "progress": progress(review, current), "reasons": review.reasons, "choices": DECISIONS}

    @app.get("/export.csv")
    def export():
        return PlainTextResponse(store.export_csv(), media_type="text/csv",
                                 headers={"Content-Disposition": "attachment; filename=review.csv"})

    return app


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; browsers never send them


async def _decide_body(request: Request) -> DecideBody:
    """The request body, size-capped before it is read in full, parsed as JSON and validated by type."""
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise HTTPException(400, "the body must be JSON: {items, decision, reason, note, reviewer}") from None
    try:
        return DecideBody.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise HTTPException(400, f"{where}: {first['msg']}; expected {{items: [ids], decision, reason, note, "
                                 "reviewer}") from None


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


def serve(review: ReviewRun, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          allowed_hosts: tuple[str, ...] = ()) -> None:
    import uvicorn

    if host not in LOOPBACK and not token:
        raise CeladonError(f"--host {host} exposes the review to your network: pass --token SECRET so that only "
                           "people with the link can read and change decisions")
    if host not in LOOPBACK:
        print(f"binding {host}: requests must carry the token")
    extra = tuple(allowed_hosts) + ((host,) if host not in ("0.0.0.0", "::") else ())
    link = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/" + (f"?token={token}" if token else "")
    print(f"reviewing {len(review.items)} images from {review.run_dir}: open {link}", flush=True)
    uvicorn.run(create_app(review, token, extra), host=host, port=port, log_level="warning")
