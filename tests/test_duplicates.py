"""Exact and near duplicates within a manifest, and leakage across splits."""

import io

from PIL import Image

from celadon.cli import main
from celadon.data.validate import ValidationConfig, validate_manifest
from celadon.taxonomy import load_taxonomy
from conftest import noise_image, write_manifest_csv

LABELS = {"dynasty": "song", "kiln": "ru", "glaze": "tianqing", "type": "washer"}


def _near_copy(src, dst):
    """What a dataset's re-export does: resized and re-encoded at another quality."""
    img = Image.open(src).convert("RGB")
    buffer = io.BytesIO()
    img.resize((58, 58), Image.BILINEAR).save(buffer, format="JPEG", quality=70)
    dst.write_bytes(buffer.getvalue())


def test_exact_near_and_conflicting_duplicates(tmp_path, write_images):
    paths = write_images(6)
    images = tmp_path / "images"
    (images / "copy.jpg").write_bytes((tmp_path / paths[0]).read_bytes())
    (images / "copy2.jpg").write_bytes((tmp_path / paths[1]).read_bytes())
    _near_copy(tmp_path / paths[2], images / "near.jpg")
    rows = [{"path": p, **LABELS} for p in paths]
    rows += [{"path": "images/copy.jpg", **LABELS},
             {"path": "images/copy2.jpg", **{**LABELS, "glaze": "celadon"}},
             {"path": "images/near.jpg", **LABELS}]
    report = validate_manifest(write_manifest_csv(tmp_path / "m.csv", rows), load_taxonomy(), ValidationConfig(),
                               progress=False)
    by_kind = {p.kind: p for p in report.problems}
    assert sorted(by_kind) == ["conflicting_duplicate", "exact_duplicate", "near_duplicate"]
    # One problem per group of copies, naming every file and row of the group.
    assert by_kind["exact_duplicate"].message.startswith("group 1: 2 identical files: ")
    assert f"{paths[0]!r} (line 2)" in by_kind["exact_duplicate"].message
    assert "'images/copy.jpg' (line 8)" in by_kind["exact_duplicate"].message
    conflict = by_kind["conflicting_duplicate"]
    assert conflict.severity == "error" and conflict.field == "glaze"
    assert "line 3: glaze=tianqing; line 9: glaze=celadon" in conflict.message
    near = by_kind["near_duplicate"].message
    assert "'images/near.jpg' (line 10)" in near and paths[2] in near
    assert (report.duplicate_groups, report.duplicate_files) == (3, 6)
    # Distinct images are never reported, and -1 turns the near search off.
    report = validate_manifest(tmp_path / "m.csv", load_taxonomy(), ValidationConfig(near_distance=-1),
                               progress=False)
    assert "near_duplicate" not in {p.kind for p in report.problems}


def _photos_with_near_copies(tmp_path, write_images, n: int = 30):
    """`n` distinct photos of one combination plus a re-exported near copy of each (images/dup<i>.jpg)."""
    paths = write_images(n)
    rows = [{"path": p, **LABELS} for p in paths]
    for i, p in enumerate(paths):
        _near_copy(tmp_path / p, tmp_path / "images" / f"dup{i}.jpg")
        rows.append({"path": f"images/dup{i}.jpg", **LABELS})
    return paths, write_manifest_csv(tmp_path / "m.csv", rows)


def test_split_reports_duplicates_that_cross_splits(tmp_path, write_images, capsys):
    # With 60 images in one combination, split independently, some copy pairs must straddle splits.
    paths, manifest = _photos_with_near_copies(tmp_path, write_images)
    assert main(["data", "split", str(manifest), "--out", str(tmp_path / "split"), "--no-group-duplicates",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    leakage = (tmp_path / "split" / "leakage.csv").read_text().strip().splitlines()[1:]
    splits = {line.split(",")[0]: line.split(",")[-1] for line in
              (tmp_path / "split" / "splits.csv").read_text().splitlines()[1:]}
    expected = sum(splits[f"../{p}"] != splits[f"../images/dup{i}.jpg"] for i, p in enumerate(paths))
    assert expected > 0 and len(leakage) == expected
    assert f"{expected} leaking duplicate pairs" in out


def test_no_leakage_on_distinct_images(tmp_path, write_images, capsys):
    paths = write_images(20)
    manifest = write_manifest_csv(tmp_path / "m.csv", [{"path": p, **LABELS} for p in paths])
    assert main(["data", "split", str(manifest), "--out", str(tmp_path / "split"), "--quiet"]) == 0
    assert "0 leaking duplicate pairs" in capsys.readouterr().out


def test_distinct_noise_images_are_far_apart():
    from celadon.data.images import perceptual_hash

    hashes = [perceptual_hash(noise_image(i)) for i in range(20)]
    assert min(bin(a ^ b).count("1") for i, a in enumerate(hashes) for b in hashes[i + 1:]) > 6


def test_split_keeps_duplicate_groups_together_by_default(tmp_path, write_images, capsys):
    paths, manifest = _photos_with_near_copies(tmp_path, write_images)
    assert main(["data", "split", str(manifest), "--out", str(tmp_path / "split"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "30 duplicate pairs found" in out and "0 leaking duplicate pairs" in out
    splits = {line.split(",")[0]: line.split(",")[-1] for line in
              (tmp_path / "split" / "splits.csv").read_text().splitlines()[1:]}
    assert all(splits[f"../{p}"] == splits[f"../images/dup{i}.jpg"] for i, p in enumerate(paths))
    # The 30 distinct photos are what the 70/20/10 rule splits: 21/6/3 groups, i.e. 42/12/6 rows.
    counts = {s: list(splits.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 42, "val": 12, "test": 6}


def test_duplicate_groups_chain():
    from celadon.data.duplicates import DuplicatePair
    from celadon.data.split import duplicate_groups

    pairs = [DuplicatePair(3, 5, 0, True), DuplicatePair(1, 3, 2, False), DuplicatePair(0, 2, 0, True)]
    assert duplicate_groups(6, pairs).tolist() == [0, 1, 0, 1, 4, 1]
