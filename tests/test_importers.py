"""Folder-per-class and filename,label CSV importers."""

import pytest

from celadon.data.importers import import_folder, import_label_csv
from celadon.data.manifest import read_manifest
from celadon.errors import CeladonError
from celadon.taxonomy import load_taxonomy

TAXONOMY = load_taxonomy()


def test_folder_per_class(tmp_path, write_images):
    paths = write_images(3)
    for folder, rel in zip(["celadon", "Moon White", "天青釉"], paths, strict=True):
        (tmp_path / "root" / folder).mkdir(parents=True)
        (tmp_path / rel).rename(tmp_path / "root" / folder / "a.jpg")
    out = import_folder(tmp_path / "root", "glaze", TAXONOMY, tmp_path / "out" / "manifest.csv")
    manifest = read_manifest(out, TAXONOMY)
    assert sorted(manifest.frame["glaze"]) == ["celadon", "moon_white", "tianqing"]
    assert manifest.frame["type"].isna().all()
    assert all(p.exists() for p in manifest.image_paths())


def test_folder_with_unknown_class_names_lists_them_all(tmp_path):
    for name in ("celadn", "bogus"):
        (tmp_path / "root" / name).mkdir(parents=True)
    with pytest.raises(CeladonError, match=r"'bogus'.*'celadn' \(closest: celadon"):
        import_folder(tmp_path / "root", "glaze", TAXONOMY, tmp_path / "m.csv")


@pytest.mark.parametrize("header", ["", "filename,label\n"])
def test_label_csv_with_class_indices(tmp_path, write_images, header):
    paths = write_images(3)
    (tmp_path / "classes.txt").write_text("bowl\nvase\n盘\n", encoding="utf-8")
    (tmp_path / "labels.csv").write_text(header + "".join(f"{p.split('/')[1]},{i}\n" for i, p in enumerate(paths)),
                                         encoding="utf-8")
    out = import_label_csv(tmp_path / "labels.csv", "type", TAXONOMY, tmp_path / "m.csv",
                           images=tmp_path / "images", classes=tmp_path / "classes.txt")
    manifest = read_manifest(out, TAXONOMY)
    assert list(manifest.frame["type"]) == ["bowl", "vase", "plate"]
    assert all(p.exists() for p in manifest.image_paths())


def test_label_csv_index_outside_mapping(tmp_path):
    (tmp_path / "classes.json").write_text('["bowl"]', encoding="utf-8")
    (tmp_path / "labels.csv").write_text("a.jpg,0\nb.jpg,5\n", encoding="utf-8")
    with pytest.raises(CeladonError, match=r"class indices \['5'\]"):
        import_label_csv(tmp_path / "labels.csv", "type", TAXONOMY, tmp_path / "m.csv",
                         classes=tmp_path / "classes.json")
