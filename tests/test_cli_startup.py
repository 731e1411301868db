"""The CLI's light commands import no heavy library; each command still gets every flag of its config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "sklearn", "matplotlib")


def _imported_after(argv: list[str], tmp_path: Path) -> set[str]:
    """The heavy top-level modules a fresh process has imported after running `celadon ARGV`."""
    script = (f"import sys\nfrom celadon.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
              f"print('MODULES', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"CELADON_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    line = next(line for line in done.stdout.splitlines() if line.startswith("MODULES"))
    return set(json.loads(line.removeprefix("MODULES ").replace("'", '"')))


def test_help_and_validate_import_no_heavy_library(tmp_path, write_images):
    from tests.conftest import write_manifest_csv

    paths = write_images(3)
    manifest = write_manifest_csv(tmp_path / "m.csv", [
        {"path": p, "dynasty": "song", "kiln": "longquan", "glaze": "celadon", "type": "vase"} for p in paths])
    assert _imported_after(["--help"], tmp_path) == set()
    assert _imported_after(["data", "validate", "--quiet", str(manifest)], tmp_path) == set()
    # a command that trains does import torch, and only when it is the one asked for
    assert "torch" in _imported_after(["train", "--help"], tmp_path)


@pytest.mark.parametrize("argv, flag", [(["train"], "--epochs"), (["synth", "generate"], "--strength"),
                                        (["data", "split"], "--seed"), (["bench", "train"], "--augment-on"),
                                        (["bench", "generate"], "--guidance")])
def test_deferred_flags_are_there_when_the_command_runs(argv, flag, capsys):
    from celadon.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([*argv, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert flag in text
    assert not re.search(r"\(default: [^)]*\)\s+\(default:", text)  # each default appended once
