"""Label vocabularies: tasks, their labels (code, English, Chinese, prompt descriptor), name resolution.

Everything downstream reads task names and classes from a `Taxonomy`, so a user can describe another
collection (other dynasties, other artefacts) with their own YAML file.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from celadon.errors import CeladonError

DEFAULT_TAXONOMY = "porcelain.yaml"


@dataclass(frozen=True)
class Label:
    code: str
    en: str
    zh: str = ""
    prompt: str = ""


@dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[Label, ...]

    @property
    def codes(self) -> list[str]:
        return [label.code for label in self.labels]

    def index(self, code: str) -> int:
        return self.codes.index(code)

    def label(self, code: str) -> Label:
        return self.labels[self.index(code)]


@dataclass(frozen=True)
class Taxonomy:
    name: str
    tasks: tuple[Task, ...]
    artefact: str = "artefact"
    analysis_combinations: tuple[tuple[str, ...], ...] = ()
    caption_parts: tuple[str, ...] = ()  # caption template parts, see porcelain.yaml
    # roles: the tasks whose label combination selection, plans, QC fidelity and figures use, and the task
    # confusion pairs come from (porcelain: glaze x type, glaze). Captions describe what caption_parts names.
    combination: tuple[str, ...] = ()
    confusion: str = ""
    source: str = ""
    _lookup: dict[str, dict[str, str]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise CeladonError(f"taxonomy {self.name!r} has no task {name!r}; tasks are {', '.join(self.task_names)}")

    def resolve(self, task: str, value: str) -> str:
        """Map a code, English or Chinese name (case- and separator-insensitive) to the label's code."""
        code = self._lookup[task].get(_normalise(value))
        if code is None:
            raise KeyError(value)
        return code

    def suggest(self, task: str, value: str, n: int = 3) -> list[str]:
        """Closest valid names for an unknown label, for error hints."""
        names = {_normalise(name): name for label in self.task(task).labels for name in (label.en, label.code) if name}
        close = difflib.get_close_matches(_normalise(value), list(names), n=n, cutoff=0.4)
        return [names[c] for c in close] or self.task(task).codes[:n]


def _normalise(value: str) -> str:
    """Lookup form: NFKC (full-width letters), case-folded, '_' and '-' as spaces, whitespace collapsed."""
    value = unicodedata.normalize("NFKC", str(value)).casefold()
    return " ".join(value.replace("_", " ").replace("-", " ").split())


def _parse(data: object, source: str) -> Taxonomy:
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict) or not data["tasks"]:
        raise CeladonError(f"{source}: a taxonomy needs a 'tasks:' mapping of task name -> list of labels")
    tasks, lookup = [], {}
    for task_name, entries in data["tasks"].items():
        if not isinstance(entries, list) or not entries:
            raise CeladonError(f"{source}: task {task_name!r} needs a non-empty list of labels")
        labels, names = [], {}
        for i, entry in enumerate(entries):
            if isinstance(entry, str | int | float) and not isinstance(entry, bool) and str(entry).strip():
                # a plain list of names: the code is derived ('Northern Song' -> 'northern_song')
                entry = {"code": _normalise(entry).replace(" ", "_"), "en": str(entry).strip()}
            if not isinstance(entry, dict) or "code" not in entry:
                raise CeladonError(f"{source}: task {task_name!r} label #{i + 1} needs a name, or a mapping with at "
                                   "least a 'code' (e.g. {code: song, en: Song})")
            label = Label(
                code=str(entry["code"]),
                en=str(entry.get("en", entry["code"])),
                zh=str(entry.get("zh", "")),
                prompt=str(entry.get("prompt", "")),
            )
            for name in (label.code, label.en, label.zh):
                if not name:
                    continue
                key = _normalise(name)
                if names.get(key, label.code) != label.code:
                    raise CeladonError(
                        f"{source}: task {task_name!r}: name {name!r} is used by both "
                        f"{names[key]!r} and {label.code!r}; names must be unique within a task"
                    )
                names[key] = label.code
            labels.append(label)
        tasks.append(Task(str(task_name), tuple(labels)))
        lookup[str(task_name)] = names
    task_names = {task.name for task in tasks}
    combos = []
    for combo in data.get("analysis_combinations", []) or []:
        unknown = [name for name in combo if name not in task_names]
        if unknown:
            raise CeladonError(f"{source}: analysis_combinations names unknown task(s) {unknown}")
        combos.append(tuple(combo))
    combination, confusion = _roles(data.get("roles"), [t.name for t in tasks], combos, source)
    return Taxonomy(
        name=str(data.get("name", Path(source).stem)),
        tasks=tuple(tasks),
        artefact=str(data.get("artefact", "artefact")),
        analysis_combinations=tuple(combos),
        caption_parts=tuple(str(part) for part in data.get("caption_parts", []) or []),
        combination=combination,
        confusion=confusion,
        source=source,
        _lookup=lookup,
    )


def _roles(roles: object, task_names: list[str], combos: list[tuple[str, ...]], source: str
           ) -> tuple[tuple[str, ...], str]:
    """(combination tasks, confusion task) from a `roles:` section; without one, the first analysis
    combination (else every task) and its first task."""
    roles = roles or {}
    if not isinstance(roles, dict):
        raise CeladonError(f"{source}: roles must be a mapping, e.g. roles: {{combination: [glaze, type], "
                           "confusion: glaze}")
    unknown = set(roles) - {"combination", "confusion"}
    if unknown:
        raise CeladonError(f"{source}: roles: unknown role(s) {sorted(unknown)}; roles are combination, confusion")
    combination = roles.get("combination") or (list(combos[0]) if combos else list(task_names))
    if isinstance(combination, str):
        combination = [combination]
    confusion = roles.get("confusion") or combination[0]
    for name in [*combination, confusion]:
        if name not in task_names:
            raise CeladonError(f"{source}: roles names unknown task {name!r}; tasks are {', '.join(task_names)}")
    return tuple(str(t) for t in combination), str(confusion)


SHIPPED = ("porcelain", "coins")  # taxonomies in this package, by name: `--taxonomy coins`


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy YAML, or a shipped one by name; `None` gives celadon's default (the paper's porcelain
    vocabulary)."""
    if path is None or (str(path) in SHIPPED and not Path(path).exists()):
        name = f"{path}.yaml" if path is not None else DEFAULT_TAXONOMY
        text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
        source = f"celadon:{name}"
    else:
        path = Path(path)
        if not path.is_file():
            raise CeladonError(f"taxonomy file {path} does not exist; pass a YAML file, a shipped name "
                               f"({', '.join(SHIPPED)}), or omit --taxonomy")
        text, source = path.read_text(encoding="utf-8-sig"), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CeladonError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return _parse(data, source)
