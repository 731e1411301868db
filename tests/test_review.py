"""The review web UI: a real server on a free port, driven by headless Chromium; durability, concurrency,
path traversal, CSRF and access token; rejected images never reach training."""

import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
import uvicorn

from celadon.review.app import create_app, load_run
from celadon.review.store import ReviewStore
from conftest import noise_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "gen"
    (run / "images").mkdir(parents=True)
    rows = []
    for i, (glaze, kind) in enumerate([("white", "bowl"), ("ivory_white", "bowl"), ("celadon", "vase")] * 2):
        noise_image(i, 32).save(run / "images" / f"i{i:05d}.png")
        rows.append({"path": f"images/i{i:05d}.png", "item_id": f"i{i:05d}", "dynasty": "song", "kiln": "ding",
                     "glaze": glaze, "type": kind, "source": "rare" if i % 2 else "confusion",
                     "prompt": f"Song dynasty, <b>{glaze}</b> {kind}", "seed": 100 + i})
    pd.DataFrame(rows).to_csv(run / "generated.csv", index=False)
    qc = pd.DataFrame(rows).assign(qc_pass=[True, False] * 3, qc_reasons=["", "glaze looks like white"] * 3)
    qc.to_csv(run / "qc.csv", index=False)
    (tmp_path / "real").mkdir()
    for i in range(4):
        noise_image(50 + i, 32).save(tmp_path / "real" / f"r{i}.jpg")
    pd.DataFrame([{"path": f"real/r{i}.jpg", "glaze": "white", "type": "bowl", "split": "train"}
                  for i in range(4)]).to_csv(tmp_path / "splits.csv", index=False)
    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(run_dir):
    """The real app on uvicorn in a thread; yields (base URL, csrf token getter)."""
    started = []

    def start(token: str | None = None):
        app = create_app(load_run(run_dir, real=run_dir.parent / "splits.csv"), token=token)
        port = _free_port()
        instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        deadline = time.time() + 20
        while not instance.started and time.time() < deadline:
            time.sleep(0.02)
        started.append((instance, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for instance, thread in started:
        instance.should_exit = True
        thread.join(timeout=10)


def _csrf(base: str, client: httpx.Client) -> str:
    page = client.get(base + "/").text
    return page.split('<meta name="csrf" content="')[1].split('"')[0]


def test_page_escapes_and_shows_labels_qc_and_references(server, run_dir):
    base = server()
    page = httpx.get(base + "/").text
    assert "&lt;b&gt;white&lt;/b&gt;" in page and "<b>white</b>" not in page  # prompts are escaped
    assert "QC: glaze looks like white" in page and "/image/real/0" in page
    assert httpx.get(base + "/image/real/0").status_code == 200
    assert page.count('class="card') == 6
    assert httpx.get(base + "/?qc=fail").text.count('class="card') == 3
    assert httpx.get(base + "/?combo=celadon+%2B+vase").text.count('class="card') == 2


def test_fifty_concurrent_decisions_lose_nothing(server, run_dir):
    base = server()
    with httpx.Client() as client:
        token = _csrf(base, client)

    def post(n: int) -> int:
        body = {"items": [f"i{n % 6:05d}"], "decision": "rejected" if n % 2 else "accepted",
                "reason": "low quality" if n % 2 else None, "reviewer": f"reviewer{n % 3}"}
        return httpx.post(base + "/api/decide", json=body, headers={"X-CSRF-Token": token}, timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(post, range(50))) == [200] * 50
    store = ReviewStore(run_dir)
    assert len(store.history()) == 50  # every write kept
    assert len(store.current()) == 6  # the last write per image wins
    last = {d.item_id: d for d in store.history()}
    assert {k: v.decision for k, v in store.current().items()} == {k: v.decision for k, v in last.items()}


def test_traversal_and_files_outside_the_run_are_refused(server, run_dir, tmp_path):
    secret = tmp_path / "secret.png"
    noise_image(99, 16).save(secret)
    (run_dir / "images" / "link.png").symlink_to(secret)
    table = pd.read_csv(run_dir / "generated.csv")
    extra = pd.DataFrame([{**table.iloc[0].to_dict(), "item_id": "evil1", "path": "images/link.png"},
                          {**table.iloc[0].to_dict(), "item_id": "evil2", "path": "../secret.png"},
                          {**table.iloc[0].to_dict(), "item_id": "evil3", "path": str(secret)}])
    pd.concat([table, extra]).to_csv(run_dir / "generated.csv", index=False)
    base = server()
    assert httpx.get(base + "/image/synthetic/i00000").status_code == 200
    for item in ("evil1", "evil2", "evil3"):
        assert httpx.get(base + f"/image/synthetic/{item}").status_code == 403, item
    for raw in ("/image/synthetic/../../secret.png", "/image/synthetic/..%2F..%2Fsecret.png",
                "/image/synthetic/%2Fetc%2Fpasswd", "/image/real/-1", "/image/real/99",
                "/image/synthetic/%2e%2e%2fsecret.png", "/images/link.png", "/secret.png"):
        response = httpx.get(base + raw)
        assert response.status_code in (403, 404), raw
        assert response.content != secret.read_bytes()


def test_posts_need_the_csrf_token_and_the_shared_token_gates_everything(server, run_dir):
    base = server()
    body = {"items": ["i00000"], "decision": "accepted", "reviewer": "ann"}
    assert httpx.post(base + "/api/decide", json=body).status_code == 403
    assert httpx.post(base + "/api/decide", json=body, headers={"X-CSRF-Token": "guess"}).status_code == 403
    with httpx.Client() as client:
        assert client.post(base + "/api/decide", json=body, headers={"X-CSRF-Token": _csrf(base, client)}
                           ).status_code == 200
        junk = client.post(base + "/api/decide", content=b"not json", headers={"X-CSRF-Token": _csrf(base, client)})
        assert junk.status_code == 400 and "must be JSON" in junk.text
        bad = client.post(base + "/api/decide", json={**body, "decision": "rejected"},
                          headers={"X-CSRF-Token": _csrf(base, client)})
        assert bad.status_code == 400 and "needs a reason" in bad.text
    assert ReviewStore(run_dir).current()["i00000"].reviewer == "ann"

    gated = server(token="s3cret")
    assert httpx.get(gated + "/").status_code == 401
    assert httpx.get(gated + "/image/synthetic/i00000").status_code == 401
    with httpx.Client(follow_redirects=True) as client:
        assert client.get(gated + "/?token=s3cret").status_code == 200
        assert client.get(gated + "/image/synthetic/i00000").status_code == 200  # the cookie carries it


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is installed by the README's test command")
def test_review_by_keyboard_and_click_in_chromium(server, run_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    base = server()
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(base + "/")
        page.fill("#reviewer", "ann")
        page.locator("#reviewer").press("Tab")
        page.locator("#item-i00000").click()
        page.keyboard.press("a")  # accept the first
        page.wait_for_selector("#item-i00000.accepted")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("2")  # reason 2: wrong type
        page.keyboard.press("r")
        page.wait_for_selector("#item-i00001.rejected")
        page.locator("#item-i00004 .reason").select_option("other")  # by click, with a note
        page.locator("#item-i00004 .note").fill("glaze pools oddly")
        page.locator("#item-i00004 .reject").click()
        page.wait_for_selector("#item-i00004.rejected")
        page.locator("#item-i00002 .accept").click()
        page.wait_for_selector("#item-i00002.accepted")
        page.locator("#item-i00003").click()
        page.keyboard.press("a")
        page.wait_for_selector("#item-i00003.accepted")
        page.keyboard.press("u")  # undo the last one
        page.wait_for_selector("#item-i00003.pending")
        page.reload()
        assert "accepted" in page.locator("#item-i00000 .badge").inner_text()
        assert "rejected (wrong type) by ann" in page.locator("#item-i00001 .badge").inner_text()
        assert page.locator("#item-i00003 .badge").inner_text() == "pending"
        assert "4 / 6 reviewed" in page.locator("#progress").inner_text()
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
        assert broken == 0
        page.screenshot(path=str(tmp_path / "review.png"))
        with page.expect_download() as download:
            page.click("text=export CSV")
        exported = pd.read_csv(download.value.path())
        browser.close()
    assert errors == []
    assert exported.set_index("item_id")["review"].to_dict() == {"i00000": "accepted", "i00001": "rejected",
                                                                 "i00002": "accepted", "i00004": "rejected"}
    assert exported.set_index("item_id").loc["i00004", "note"] == "glaze pools oddly"
    assert exported.set_index("item_id").loc["i00004", "reason"] == "other"
    assert (tmp_path / "review.png").stat().st_size > 10_000


def test_training_never_sees_rejected_images(run_dir):
    from celadon.classify.train import load_synthetic
    from celadon.taxonomy import load_taxonomy

    ReviewStore(run_dir).decide(["i00000", "i00002"], "rejected", "ann", reason="modern artefact")
    ReviewStore(run_dir).decide(["i00002"], "accepted", "bob")  # a second reviewer overrules
    kept = load_synthetic(str(run_dir / "qc.csv"), load_taxonomy())
    assert set(kept.frame["item_id"]) == {"i00002", "i00004"}  # QC passes 0, 2, 4; review rejects 0


def test_serve_without_a_generation_run_is_a_clear_error(tmp_path):
    from celadon.cli import main

    assert main(["review", "serve", str(tmp_path)]) == 2
    assert os.path.exists(tmp_path)
