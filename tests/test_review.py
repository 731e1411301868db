"""The review web UI: a real server on a free port, driven by headless Chromium; durability, concurrency,
path traversal, CSRF and access token; rejected images never reach training."""

import json
import os
import shutil
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
                     "glaze": glaze, "type": kind, "purpose": "rare" if i % 2 else "confusion",
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


@pytest.fixture
def server(run_dir):
    """The real app on uvicorn in a thread, bound to port 0 (the OS picks a free one, nothing can take it
    first); returns its base URL once it answers."""
    started = []

    def start(token: str | None = None, allowed_hosts: tuple[str, ...] = ()):
        app = create_app(load_run(run_dir, real=run_dir.parent / "splits.csv"), token=token,
                         allowed_hosts=allowed_hosts)
        instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        started.append((instance, thread))
        deadline = time.time() + 20
        while not instance.started and thread.is_alive() and time.time() < deadline:
            time.sleep(0.02)
        assert instance.started, "the review server did not start"
        port = instance.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/", params={} if token is None else {"token": token}).status_code in (200, 303)
        return base

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


@pytest.mark.slow
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
        page.keyboard.press("4")  # reason 4: wrong type (wrong dynasty, kiln, glaze, type, then general flaws)
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


def test_training_never_sees_rejected_images(run_dir, tmp_path):
    """Decisions reach training through curate's accepted.csv; the latest decision per image counts."""
    from celadon.classify.train import load_synthetic
    from celadon.synth.curate import CurateConfig, curate
    from celadon.taxonomy import load_taxonomy

    ReviewStore(run_dir).decide(["i00000", "i00002"], "rejected", "ann", reason="modern artefact")
    ReviewStore(run_dir).decide(["i00002"], "accepted", "bob")  # a second reviewer overrules
    accepted = curate(CurateConfig(qc=str(run_dir / "qc.csv"), generation=str(run_dir), out=str(tmp_path / "c")))
    kept = load_synthetic(str(accepted), load_taxonomy())
    assert set(kept.frame["item_id"]) == {"i00002", "i00004"}  # QC passes 0, 2, 4; review rejects 0


def test_serve_without_a_generation_run_is_a_clear_error(tmp_path):
    from celadon.cli import main

    assert main(["review", "serve", str(tmp_path)]) == 2
    assert os.path.exists(tmp_path)


ROUTES = [("GET", "/"), ("GET", "/api/state"), ("GET", "/export.csv"), ("GET", "/image/synthetic/i00000"),
          ("GET", "/image/real/0"), ("POST", "/api/decide")]


def test_a_foreign_host_name_is_refused_on_every_route(server):
    """DNS rebinding: a page on attacker.example whose name now points at 127.0.0.1 sends its own Host."""
    base = server(allowed_hosts=("review.lab.example",))
    with httpx.Client() as client:
        csrf = _csrf(base, client)
        body = {"items": ["i00000"], "decision": "accepted", "reviewer": "eve"}
        for method, route in ROUTES:
            response = client.request(method, base + route, headers={"Host": "attacker.example", "X-CSRF-Token": csrf},
                                      json=body if method == "POST" else None)
            assert response.status_code == 400 and "host name" in response.text, route
            assert csrf not in response.text
        port = base.rsplit(":", 1)[1]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "review.lab.example:8080"):
            assert client.get(base + "/", headers={"Host": host}).status_code == 200, host
        assert client.get(base + "/", headers={"Host": "[::1"}).status_code == 400  # malformed: refused, no 500


def test_a_post_from_a_foreign_origin_is_refused_even_with_the_token(server, run_dir):
    base = server()
    body = {"items": ["i00000"], "decision": "accepted", "reviewer": "eve"}
    with httpx.Client() as client:
        csrf = _csrf(base, client)
        for header in ({"Origin": "http://attacker.example"}, {"Referer": "http://attacker.example/page"}):
            response = client.post(base + "/api/decide", json=body, headers={"X-CSRF-Token": csrf, **header})
            assert response.status_code == 403, header
        assert ReviewStore(run_dir).current() == {}
        same = client.post(base + "/api/decide", json=body, headers={"X-CSRF-Token": csrf, "Origin": base})
        assert same.status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"items": 5}, "items"),
    ({"note": {}}, "note"),
    ({"note": []}, "note"),
    ({"reviewer": None}, "reviewer"),
    ({"items": []}, "items"),
    ({"decision": "maybe"}, "decision"),
    ({"extra": 1}, "extra"),
])
def test_malformed_bodies_are_400s_naming_the_field(server, run_dir, body, field):
    base = server()
    good = {"items": ["i00000"], "decision": "accepted", "reviewer": "ann"}
    with httpx.Client() as client:
        response = client.post(base + "/api/decide", json=good | body, headers={"X-CSRF-Token": _csrf(base, client)})
    assert response.status_code == 400 and response.json()["detail"].startswith(field)
    assert ReviewStore(run_dir).history() == []


def test_nan_deep_huge_and_non_ascii_requests_are_4xx_not_500(server, run_dir):
    base = server()
    with httpx.Client() as client:
        csrf = {"X-CSRF-Token": _csrf(base, client)}
        nan = b'{"items": ["i00000"], "decision": "accepted", "reviewer": "ann", "note": NaN}'
        assert client.post(base + "/api/decide", content=nan, headers=csrf).status_code == 400
        deep = b"[" * 100_000 + b"]" * 100_000
        assert client.post(base + "/api/decide", content=deep[:60_000], headers=csrf).status_code == 400
        huge = json.dumps({"items": ["i00000"], "decision": "accepted", "reviewer": "ann",
                           "note": "x" * 30_000_000}).encode()
        assert client.post(base + "/api/decide", content=huge, headers=csrf).status_code == 413
        assert client.post(base + "/api/decide", json={}, headers={"X-CSRF-Token": "töken".encode()}).status_code == 403
    assert ReviewStore(run_dir).history() == []
    gated = server(token="s3cret")
    assert httpx.get(gated + "/?token=t%C3%B6ken").status_code == 401


def test_only_image_files_the_run_lists_are_served_and_a_missing_one_is_404(server, run_dir):
    table = pd.read_csv(run_dir / "generated.csv")
    (run_dir / "images" / "disguised.png").symlink_to(run_dir / "generated.csv")  # inside the run, not an image
    extra = pd.DataFrame([{**table.iloc[0].to_dict(), "item_id": "csv", "path": "generated.csv"},
                          {**table.iloc[0].to_dict(), "item_id": "link", "path": "images/disguised.png"},
                          {**table.iloc[0].to_dict(), "item_id": "db", "path": "review.sqlite"},
                          {**table.iloc[0].to_dict(), "item_id": "gone", "path": "images/missing.png"}])
    pd.concat([table, extra]).to_csv(run_dir / "generated.csv", index=False)
    base = server()
    assert httpx.get(base + "/image/synthetic/csv").status_code == 403
    assert httpx.get(base + "/image/synthetic/db").status_code == 403
    assert httpx.get(base + "/image/synthetic/link").status_code == 403
    assert httpx.get(base + "/image/synthetic/gone").status_code == 404


def test_binding_beyond_localhost_needs_a_token(run_dir):
    from celadon.cli import main
    from celadon.errors import CeladonError
    from celadon.review.app import serve

    with pytest.raises(CeladonError, match="--token"):
        serve(load_run(run_dir), host="0.0.0.0", port=1)
    assert main(["review", "serve", str(run_dir), "--host", "0.0.0.0"]) == 2


def test_a_corrupt_review_database_is_a_one_line_error(run_dir, capsys):
    from celadon.cli import main
    from celadon.errors import CeladonError
    from celadon.synth.curate import CurateConfig, curate

    (run_dir / "review.sqlite").write_bytes(b"this is not sqlite" * 100)
    assert main(["review", "export", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "review.sqlite: not a readable review database" in err[0] and "move it aside" in err[0]
    with pytest.raises(CeladonError, match="not a readable review database"):
        curate(CurateConfig(qc=str(run_dir / "qc.csv"), generation=str(run_dir), out=str(run_dir / "curated")))
