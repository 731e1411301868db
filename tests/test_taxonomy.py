import pytest

from celadon.errors import CeladonError
from celadon.taxonomy import load_taxonomy


def test_default_taxonomy_has_the_papers_vocabulary():
    taxonomy = load_taxonomy()
    sizes = {task.name: len(task.labels) for task in taxonomy.tasks}
    assert sizes == {"dynasty": 2, "kiln": 17, "glaze": 17, "type": 20}
    moon_white = taxonomy.task("glaze").label("moon_white")
    assert moon_white.zh == "月白釉"
    assert "pale blue lighter than bluish green" in moon_white.prompt
    assert "no spout or handle" in taxonomy.task("type").label("vase").prompt
    assert ("glaze", "type") in taxonomy.analysis_combinations


@pytest.mark.parametrize("name", ["moon_white", "Moon White", "moon-white", "月白釉", "  MOON  white "])
def test_codes_english_and_chinese_names_resolve_to_the_code(name):
    assert load_taxonomy().resolve("glaze", name) == "moon_white"


def test_unknown_label_suggestions_are_close_names():
    assert load_taxonomy().suggest("glaze", "moonwhite")[0] == "moon_white"


def test_user_taxonomy_for_another_collection(tmp_path):
    path = tmp_path / "bronzes.yaml"
    path.write_text("name: bronzes\ntasks:\n  period:\n    - {code: shang, en: Shang}\n    - {code: zhou, en: Zhou}\n",
                    encoding="utf-8")
    taxonomy = load_taxonomy(path)
    assert taxonomy.task_names == ["period"]
    assert taxonomy.resolve("period", "Zhou") == "zhou"


def test_ambiguous_names_and_missing_files_are_one_line_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tasks:\n  t:\n    - {code: a, en: same}\n    - {code: b, en: Same}\n", encoding="utf-8")
    with pytest.raises(CeladonError, match="used by both 'a' and 'b'"):
        load_taxonomy(path)
    with pytest.raises(CeladonError, match="does not exist"):
        load_taxonomy(tmp_path / "nope.yaml")
