"""One owner of what names a stage: every setting the study runner sets is refused in a study config, and the
runner may set only what `identity.RUNNER_SETS` declares."""

from __future__ import annotations

import dataclasses

import pytest

from celadon.errors import CeladonError
from celadon.experiment.config import load_study, stage_sections
from celadon.experiment.identity import EXECUTION, RUNNER_SETS, check_runner_sets, key_settings, runner_sets

SAMPLE = {bool: True, int: 1, float: 0.5, str: "x"}


def _every_runner_set_key() -> list[tuple[str, str, type]]:
    """(section, key, class) for every runner-set field of every stage section of the demo."""
    config = load_study("demo")
    found = []
    for cls, section, _ in stage_sections(config):
        names = {f.name for f in dataclasses.fields(cls)}
        # a generator's own `lora: true/false` is the runner's switch for that generator, not GenerateConfig.lora
        names -= {"lora"} if section.startswith("synthesis.generators.") else set()
        found += [(section, key, cls) for key in runner_sets(cls).fields if key in names]
    return found


def test_every_stage_section_of_the_demo_has_a_declaration():
    classes = {cls.__name__ for cls, _, _ in stage_sections(load_study("demo"))}
    assert classes <= set(RUNNER_SETS), classes - set(RUNNER_SETS)
    for name, sets in RUNNER_SETS.items():  # each declared field is one of the class's, once
        assert len(set(sets.fields)) == len(sets.fields), name


@pytest.mark.parametrize("section, key, cls", _every_runner_set_key(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_a_key_the_runner_sets_is_a_one_line_error_naming_it(section, key, cls):
    hint = next(f.type for f in dataclasses.fields(cls) if f.name == key)
    value = next((v for t, v in SAMPLE.items() if t.__name__ in str(hint)), "x")
    with pytest.raises(CeladonError) as error:
        load_study("demo", {}, [f"{section}.{key}={value!r}" if isinstance(value, str)
                                     else f"{section}.{key}={str(value).lower()}"])
    message = str(error.value)
    assert message.startswith(f"{section}.{key}: set by the study runner, not in the config; remove it")
    assert "\n" not in message


def test_an_evaluation_split_in_the_config_is_refused_not_ignored():
    """Once accepted and silently evaluated on test."""
    refused = r"^evaluate.split: set by the study runner.*endpoint_split.*the reference reads validation"
    with pytest.raises(CeladonError, match=refused):
        load_study("demo", {}, ["evaluate.split=val"])
    load_study("demo", {}, ["evaluate.minority_threshold=20"])  # the user's settings still pass


def test_the_runner_may_set_only_declared_fields():
    from celadon.classify.train import TrainConfig

    check_runner_sets(TrainConfig, {"seed": 1, "splits": "s.csv", "threads": 2})
    with pytest.raises(AssertionError, match="the runner sets epochs on TrainConfig without declaring it"):
        check_runner_sets(TrainConfig, {"seed": 1, "epochs": 3})


def test_stage_keys_leave_out_execution_and_inputs_and_keep_the_rest():
    from celadon.synth.plan import PlanConfig

    plan = PlanConfig(manifest="a/splits.csv", metrics="m.json", out="o", total=12, seed=4)
    key = key_settings(plan)
    assert {"manifest", "metrics", "out", "taxonomy"}.isdisjoint(key)
    assert key["total"] == 12 and key["seed"] == 4 and key["allow_test_metrics"] is False
    dropped = key_settings(plan, drop=("seed",))
    assert not set(EXECUTION) & set(dropped) and "seed" not in dropped


def test_the_config_reference_in_docs_is_written_from_the_code():
    """docs/config-reference.md lists every key of every section: regenerate it when a config field changes
    (`python -m celadon.experiment.config_doc > docs/config-reference.md`)."""
    from pathlib import Path

    from celadon.experiment.config_doc import config_reference

    text = config_reference()
    written = (Path(__file__).parent.parent / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert written == text
    assert "| `epochs` | `50` |" in text and "`synthetic_ratio`" in text.split("## `evaluate`")[0]
    assert "|  |\n" not in text  # every key says what it does
