"""Every validation problem class, on real broken files the tests create."""

import codecs

import numpy as np
import pytest
from PIL import Image

from celadon.cli import main
from celadon.data.images import load_image
from celadon.data.manifest import parse_manifest
from celadon.data.validate import ValidationConfig, validate_manifest
from celadon.taxonomy import load_taxonomy
from conftest import noise_image, write_manifest_csv

TAXONOMY = load_taxonomy()
LABELS = {"dynasty": "song", "kiln": "ru", "glaze": "tianqing", "type": "washer"}


def _validate(path, **config):
    return validate_manifest(path, TAXONOMY, ValidationConfig(**config), progress=False)


def _kinds(report):
    return sorted(p.kind for p in report.problems)


def test_clean_manifest_with_names_in_three_forms(tmp_path, write_images):
    paths = write_images(3)
    rows = [{"path": paths[0], **LABELS},
            {"path": paths[1], "dynasty": "Yuan", "kiln": "Longquan", "glaze": "celadon", "type": "bowl"},
            {"path": paths[2], "dynasty": "宋", "kiln": "定窑", "glaze": "", "type": ""}]
    report = _validate(write_manifest_csv(tmp_path / "m.csv", rows))
    assert report.problems == []
    frame = report.manifest.frame
    assert list(frame["kiln"]) == ["ru", "longquan", "ding"]
    assert frame["glaze"].iat[2] is None  # missing labels stay missing, to be masked later


def test_every_broken_row_is_reported_at_once(tmp_path, write_images):
    paths = write_images(4)
    images = tmp_path / "images"
    good = noise_image(99).tobytes()
    (images / "truncated.jpg").write_bytes((images / "img0000.jpg").read_bytes()[:400])
    (images / "empty.jpg").write_bytes(b"")
    (images / "notimage.jpg").write_bytes(good[:500])
    noise_image(7, size=16).save(images / "tiny.png")
    Image.fromarray(np.random.default_rng(0).random((64, 64)).astype(np.float32), "F").save(images / "float.tif")
    rows = [
        {"path": paths[0], **LABELS},
        {"path": "images/truncated.jpg", **LABELS},
        {"path": "images/empty.jpg", **LABELS},
        {"path": "images/notimage.jpg", **LABELS},
        {"path": "images/tiny.png", **LABELS},
        {"path": "images/float.tif", **LABELS},
        {"path": "images/missing.jpg", **LABELS},
        {"path": paths[1], **{**LABELS, "glaze": "moonwhite"}},
        {"path": paths[0], **LABELS},
    ]
    report = _validate(write_manifest_csv(tmp_path / "m.csv", rows))
    assert _kinds(report) == sorted(["truncated", "zero_size", "corrupt", "tiny_image", "unsupported_mode",
                                     "missing_file", "unknown_label", "duplicate_row"])
    lines = {p.kind: str(p) for p in report.problems}
    assert "m.csv:line 3:" in lines["truncated"] and "images/truncated.jpg" in lines["truncated"]
    assert "[glaze]" in lines["unknown_label"] and "'moon_white'" in lines["unknown_label"]
    assert "first at line 2" in lines["duplicate_row"]
    assert "16x16" in lines["tiny_image"]
    assert "'F'" in lines["unsupported_mode"]
    assert all("\n" not in line for line in lines.values())


def test_awkward_modes_are_converted_not_rejected(tmp_path):
    base = np.asarray(noise_image(3))
    Image.fromarray(base).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(base).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(base).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(base).convert("L").save(tmp_path / "grey.png")
    deep = (np.asarray(Image.fromarray(base).convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(deep).save(tmp_path / "deep16.png")
    for name in ("cmyk.jpg", "rgba.png", "palette.png", "grey.png", "deep16.png"):
        img = load_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (64, 64), name
    # 16-bit values are scaled to 8 bits, not clipped to white.
    grey = np.asarray(load_image(tmp_path / "deep16.png"))[..., 0].astype(int)
    expected = np.asarray(Image.fromarray(base).convert("L"), dtype=int)
    assert np.abs(grey - expected).max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (80, 40), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (40, 80)


def test_bom_and_utf16_manifests_are_read(tmp_path, write_images):
    paths = write_images(1)
    text = f"path,dynasty,kiln,glaze,type\n{paths[0]},宋,汝窑,天青釉,洗\n"
    (tmp_path / "bom.csv").write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    (tmp_path / "utf16.csv").write_bytes(text.encode("utf-16"))
    for name in ("bom.csv", "utf16.csv"):
        report = _validate(tmp_path / name)
        assert report.problems == [], name
        assert report.manifest.frame["type"].iat[0] == "washer"


def test_non_utf8_manifest_names_the_line_and_the_fix(tmp_path, write_images):
    paths = write_images(1)
    text = f"path,dynasty,kiln,glaze,type\n{paths[0]},宋,汝窑,天青釉,洗\n"
    (tmp_path / "gbk.csv").write_bytes(text.encode("gb18030"))
    report = _validate(tmp_path / "gbk.csv")
    assert _kinds(report) == ["encoding"]
    assert "line 2" in str(report.problems[0]) and "gb18030" in str(report.problems[0])
    assert _validate(tmp_path / "gbk.csv", encoding="gb18030").problems == []


@pytest.mark.parametrize(
    ("content", "kind", "fragment"),
    [
        ("", "empty_manifest", "empty"),
        ("path,dynasty,kiln,glaze,type\n", "empty_manifest", "no rows"),
        ("file,dynasty,kiln,glaze,type\na.jpg,song,ru,celadon,bowl\n", "bad_header", "no 'path' column"),
        ("a.jpg,song,ru,celadon,bowl\n", "bad_header", "looks like data"),
        ("path,dynasty,kiln,glaze,type\na.jpg,song,ru\n", "bad_row", "has 3 fields"),
    ],
)
def test_structural_problems(tmp_path, content, kind, fragment):
    (tmp_path / "m.csv").write_text(content, encoding="utf-8")
    report = _validate(tmp_path / "m.csv")
    assert kind in _kinds(report)
    assert fragment in " ".join(str(p) for p in report.problems)


def test_missing_task_column_is_a_warning_and_masks_the_task(tmp_path, write_images):
    paths = write_images(1)
    write_manifest_csv(tmp_path / "m.csv", [{"path": paths[0], "glaze": "white"}], header="path,glaze")
    manifest, problems = parse_manifest(tmp_path / "m.csv", TAXONOMY)
    assert {p.severity for p in problems} == {"warning"}
    assert manifest.frame["type"].iat[0] is None and manifest.frame["glaze"].iat[0] == "white"


def test_cli_exit_codes_and_one_line_errors(tmp_path, write_images, capsys):
    paths = write_images(2)
    good = write_manifest_csv(tmp_path / "good.csv", [{"path": p, **LABELS} for p in paths])
    bad = write_manifest_csv(tmp_path / "bad.csv", [{"path": "images/none.jpg", **LABELS}])
    assert main(["data", "validate", str(good), "--quiet"]) == 0
    assert main(["data", "validate", str(bad), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "error:" in out and "images/none.jpg" in out and "Traceback" not in out
    # A command that needs a manifest refuses a missing one in a single line.
    assert main(["data", "split", str(tmp_path / "nothing.csv"), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    # A label the taxonomy does not know is a data problem (exit 1): the row's line, then what to do, each with
    # one "error:" prefix (it used to read "error: error: ...").
    unknown = write_manifest_csv(tmp_path / "unknown.csv", [{"path": paths[0], **LABELS, "glaze": "plaid"}])
    assert main(["data", "split", str(unknown), "--out", str(tmp_path / "u"), "--quiet"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") and line.count("error:") == 1 for line in lines)
    assert "line 2" in lines[0] and "plaid" in lines[0] and "nothing was written" in lines[1]
    assert not (tmp_path / "u" / "splits.csv").exists()


def test_parquet_manifest_reads_like_csv(tmp_path, write_images):
    import pandas as pd

    paths = write_images(2)
    pd.DataFrame([{"path": paths[0], **LABELS}, {"path": paths[1], **{**LABELS, "glaze": "Moon White"}}]).to_parquet(
        tmp_path / "m.parquet")
    report = _validate(tmp_path / "m.parquet")
    assert report.problems == []
    assert list(report.manifest.frame["glaze"]) == ["tianqing", "moon_white"]
    assert report.manifest.row_name(1) == "row 2"


def test_header_typo_of_a_task_is_an_error_but_derived_columns_are_not(tmp_path):
    from celadon.data.manifest import parse_manifest
    from celadon.taxonomy import load_taxonomy

    taxonomy = load_taxonomy()
    for header, flagged in (("path,Glaze,type", "Glaze"), ("path,glazes,type", "glazes"),
                            ("path,glaze,type,pred_glaze,qc_pass", None)):
        path = tmp_path / "m.csv"
        path.write_text(header + "\n")
        _, problems = parse_manifest(path, taxonomy)
        bad = [p.field for p in problems if p.kind == "bad_header"]
        assert bad == ([flagged] if flagged else []), header


def test_a_repeated_column_is_an_error_naming_it(tmp_path, write_images):
    paths = write_images(1)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,dynasty,dynasty,glaze,type\n{paths[0]},song,yuan,celadon,vase\n", encoding="utf-8")
    report = _validate(manifest)
    assert [(p.kind, p.field) for p in report.problems] == [("bad_header", "dynasty")]
    assert "appears 2 times in the header (columns 2, 3)" in report.problems[0].message
    assert len(report.manifest) == 0  # nothing is read from an ambiguous table


def test_a_label_of_another_task_names_that_task(tmp_path, write_images):
    paths = write_images(1)
    rows = [{"path": paths[0], **{**LABELS, "dynasty": "Longquan"}}]
    [problem] = _validate(write_manifest_csv(tmp_path / "m.csv", rows)).problems
    assert (problem.kind, problem.field) == ("unknown_label", "dynasty")
    assert "'Longquan' is not a dynasty label but a kiln label" in problem.message


def test_windows_paths_and_urls_get_a_hint_not_just_missing(tmp_path, write_images):
    paths = write_images(2)
    windows = paths[0].replace("/", "\\")
    rows = [{"path": windows, **LABELS}, {"path": "https://example.org/pot.jpg", **LABELS},
            {"path": "elsewhere\\pot.jpg", **LABELS}, {"path": paths[1], **LABELS}]
    problems = {p.path: p for p in _validate(write_manifest_csv(tmp_path / "m.csv", rows)).problems}
    assert set(problems) == {windows, "https://example.org/pot.jpg", "elsewhere\\pot.jpg"}
    assert problems[windows].kind == "missing_file"
    assert f"write it as {paths[0]!r}, which exists" in problems[windows].message
    assert "URLs are not read" in problems["https://example.org/pot.jpg"].message
    assert "write it as 'elsewhere/pot.jpg', relative to" in problems["elsewhere\\pot.jpg"].message
