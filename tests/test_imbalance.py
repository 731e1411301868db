"""Imbalance metrics against values computed by hand."""

import json
import math

import pandas as pd
import pytest

from celadon.data.imbalance import analyze_manifest, gini, imbalance_metrics, lorenz_curve
from celadon.data.manifest import Manifest
from celadon.taxonomy import load_taxonomy


def test_metrics_by_hand():
    m = imbalance_metrics({"a": 1, "b": 3, "c": 6, "absent": 0})
    # mean 10/3, population std sqrt(((1-10/3)^2 + (3-10/3)^2 + (6-10/3)^2) / 3) = sqrt(38/9) = 2.0548
    assert m["n_classes"] == 3 and m["n_images"] == 10
    assert m["imbalance_ratio"] == 6.0
    assert m["coefficient_of_variation"] == pytest.approx(math.sqrt(38 / 9) / (10 / 3))
    # Gini = sum|xi-xj| / (2 n^2 mean) = (2 + 5 + 3) * 2 / (2 * 9 * 10/3) = 1/3
    assert m["gini"] == pytest.approx(1 / 3)
    entropy = -sum(p * math.log(p) for p in (0.1, 0.3, 0.6))
    assert m["normalized_entropy"] == pytest.approx(entropy / math.log(3))
    assert m["min"] == {"class": "a", "count": 1} and m["max"] == {"class": "c", "count": 6}
    assert m["size_buckets"] == {"1": 1, "2": 0, "3-9": 2, "10-49": 0, "50-99": 0, ">=100": 0}


def test_balanced_and_lorenz():
    assert gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert imbalance_metrics({"a": 4, "b": 4})["normalized_entropy"] == pytest.approx(1.0)
    x, y = lorenz_curve([1, 3, 6])
    assert x.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1]) and y.tolist() == pytest.approx([0, 0.1, 0.4, 1.0])


def test_analyze_writes_json_plots_and_before_after(tmp_path):
    taxonomy = load_taxonomy()
    rows = [{"path": f"{i}.jpg", "dynasty": "song", "kiln": "ru", "glaze": "white" if i < 8 else "black",
             "type": "bowl" if i % 2 else "vase"} for i in range(10)]
    rows.append({"path": "x.jpg", "dynasty": None, "kiln": None, "glaze": "white", "type": None})
    before = Manifest(pd.DataFrame(rows).astype(object), tmp_path, taxonomy)
    extra = [{"path": f"s{i}.jpg", "dynasty": "song", "kiln": "ru", "glaze": "black", "type": "bowl"}
             for i in range(6)]
    after = Manifest(pd.DataFrame(rows + extra).astype(object), tmp_path, taxonomy)
    result = analyze_manifest(before, tmp_path / "out", compare=after)
    glaze = result["datasets"]["before"]["groupings"]["glaze"]
    assert glaze["counts"] == {"white": 9, "black": 2} and glaze["imbalance_ratio"] == 4.5
    assert "celadon" in glaze["absent_classes"]
    combo = result["datasets"]["before"]["groupings"]["glaze+type"]
    assert combo["unlabelled_rows"] == 1 and combo["n_images"] == 10
    assert result["change"]["glaze"]["imbalance_ratio"] == {"before": 4.5, "after": 9 / 8}
    saved = json.loads((tmp_path / "out" / "imbalance.json").read_text())
    assert saved["change"]["glaze"]["gini"]["after"] < saved["change"]["glaze"]["gini"]["before"]
    for name in ("glaze", "glaze+type", "all"):
        assert (tmp_path / "out" / f"longtail_{name}.png").stat().st_size > 1000
        assert (tmp_path / "out" / f"lorenz_{name}.png").stat().st_size > 1000
