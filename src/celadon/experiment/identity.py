"""What names a stage, in one place: which settings of each stage config the study runner sets itself, and
which of a config's settings go into its stage key.

Execution fields (`EXECUTION`: where and how fast a stage runs — folder, threads, device, worker processes,
caches) are never in a key: the same work elsewhere reuses the stage. Of a config's fields, the runner sets
(`RUNNER_SETS`):
- **inputs**: paths to other stages' outputs, left out of the key because the input stages' keys name them;
- **values**: what the runner decides per stage (an arm's seed, ratio and tasks; which split an evaluation
  reads; never test metrics for a decision), in the key;
- **study**: execution fields a study sets once for every stage (threads, device, its own folders).

Every other field is the user's, from the study config's section, and in the key. A section that sets a field
the runner sets is refused before any stage runs (`refused_keys`), and the runner may set only the fields
declared here (`check_runner_sets`), so this table cannot drift from what the runner does: a test walks every
entry through a study config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

EXECUTION = ("out", "threads", "device", "devices", "workers", "cache_dir", "shard", "allow_leakage")


@dataclass(frozen=True)
class RunnerSets:
    inputs: tuple[str, ...] = ()  # paths to input stages' outputs: out of the key (the inputs' keys name them)
    values: tuple[str, ...] = ()  # decided by the runner for each stage: in the key
    study: tuple[str, ...] = ()  # execution fields the study sets for every stage (threads, device, folders)

    @property
    def fields(self) -> tuple[str, ...]:
        return self.inputs + self.values + self.study


# Keyed by config class name, so this module imports none of the stages (and no torch).
# `taxonomy` is an input everywhere: the data stage's key holds the taxonomy's content.
RUNNER_SETS: dict[str, RunnerSets] = {
    "EmbeddedConfig": RunnerSets(study=("out", "workers")),
    "SplitConfig": RunnerSets(inputs=("manifest", "taxonomy", "root"), values=("allow_outside_root",),
                              study=("out",)),
    "AugmentConfig": RunnerSets(inputs=("splits", "taxonomy"), study=("out",)),
    "TrainConfig": RunnerSets(inputs=("splits", "synthetic", "taxonomy"),
                              values=("seed", "synthetic_ratio", "synthetic_tasks", "budget_ratio", "source_size",
                                      "log_tensorboard"),
                              study=("out", "cache_dir", "threads", "device")),
    # an evaluation reads the taxonomy of the model it evaluates: None here, and so in the key
    "EvaluateConfig": RunnerSets(inputs=("model_dir", "splits"), values=("split", "taxonomy"),
                                 study=("out", "cache_dir", "threads", "device")),
    "SelectConfig": RunnerSets(inputs=("metrics", "manifest", "taxonomy"), values=("allow_test_metrics",),
                               study=("out",)),
    "LoraConfig": RunnerSets(inputs=("data", "model"), study=("out", "threads", "device")),
    "PlanConfig": RunnerSets(inputs=("metrics", "manifest", "taxonomy"), values=("allow_test_metrics",),
                             study=("out",)),
    "GenerateConfig": RunnerSets(inputs=("plan", "lora", "model", "real", "taxonomy"),
                                 study=("out", "shard", "threads", "device")),
    "QCConfig": RunnerSets(inputs=("table", "real", "model_dir", "judge_metrics", "second_reader", "fold_models",
                                   "folds", "taxonomy"),
                           values=("allow_test_metrics",), study=("out", "device")),
    "CurateConfig": RunnerSets(inputs=("qc", "generation", "taxonomy"), study=("out",)),
}


def runner_sets(cls: type) -> RunnerSets:
    return RUNNER_SETS.get(cls.__name__, RunnerSets())


def refused_keys(cls: type, values: dict) -> list[str]:
    """The keys of a study section that the runner sets itself (a config must not)."""
    owned = runner_sets(cls).fields
    return [key for key in values if key in owned]


def check_runner_sets(cls: type, owned: dict) -> None:
    """The runner sets only the fields declared for it above (a bug in celadon otherwise, caught by tests)."""
    undeclared = sorted(set(owned) - set(runner_sets(cls).fields))
    if undeclared:
        raise AssertionError(f"the runner sets {', '.join(undeclared)} on {cls.__name__} without declaring it in "
                             "celadon.experiment.identity.RUNNER_SETS")


def make(cls, overrides: dict[str, Any], **owned: Any):
    """A stage config from YAML overrides plus what the runner sets (declared in `identity.RUNNER_SETS`, which
    `check_overrides` refused in the config), built as the CLI builds it."""
    from celadon.settings import build

    check_runner_sets(cls, owned)
    return build(cls, dict(overrides) | owned, cls.__name__)


def key_settings(config: Any, values: dict | None = None, drop: tuple[str, ...] = ()) -> dict:
    """A stage config as its stage key reads it: its fields (or `values`, the config's own view of them, e.g.
    `TrainConfig.key_settings()`) minus execution fields, the input paths that the input stages' keys already
    name, and `drop` (settings a stage leaves out while they are off, so earlier keys hold)."""
    values = dataclasses.asdict(config) if values is None else values
    inputs = runner_sets(type(config)).inputs
    return {k: v for k, v in values.items() if k not in (*EXECUTION, *inputs, *drop)}
