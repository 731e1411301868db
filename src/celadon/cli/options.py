"""Command-line flags built from a stage's config dataclass, and `-c run.yaml` re-runs.

The dataclass is the one list of a stage's settings and defaults: its fields become the flags (`rank` ->
`--rank`, booleans `--x/--no-x`, lists comma-separated), each field's comment in the source becomes the
flag's help, and the default shown is the dataclass's. `-c run.yaml` starts from the config a finished run
recorded (timm's args.yaml round trip); flags given beside it override single settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from typing import Any

from celadon.errors import CeladonError

_FIELD_LINE = re.compile(r"^\s{4}(\w+)\s*:")


DEVICE_HELP = "auto (the GPU when there is one), cpu, cuda or cuda:N"
BENCH_JSON_HELP = "also write the rates and the settings they were measured at here (for `bench estimate`)"


def write_bench_json(path: str | None, result: dict, **settings: Any) -> None:
    """A benchmark's result plus its settings, for `celadon bench estimate` to read and check against a study."""
    if path:
        from celadon.runinfo import write_json

        write_json(path, result | {"settings": settings})
        print(f"rates: {path}")


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the comment lines just above it, then its trailing one."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type == tokenize.COMMENT}
    names = {f.name for f in dataclasses.fields(cls)}
    helps: dict[str, str] = {}
    above: list[str] = []
    for number, line in enumerate(source.splitlines(), start=1):
        if line.strip().startswith("#"):
            above.append(comments.get(number, ""))
            continue
        match = _FIELD_LINE.match(line)
        if match and match.group(1) in names:
            text = " ".join([*above, comments.get(number, "")]).strip()
            if text:
                helps[match.group(1)] = text.replace("%", "%%")
        above = []
    return helps


def _plain(hint: Any) -> Any:
    """The type without `| None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in _items(text):
        a, sep, b = item.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r} is not class:class (e.g. white:ivory_white)")
        pairs.append((a.strip(), b.strip()))
    return tuple(pairs)


def _mapping(value_type: type):
    def parse(text: str) -> dict:
        values = {}
        for item in _items(text):
            name, sep, value = item.partition("=")
            if not sep:
                raise argparse.ArgumentTypeError(f"{item!r} is not name=value")
            try:
                values[name.strip()] = value_type(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not name={value_type.__name__}") from None
        return values
    return parse


def _argument(hint: Any) -> dict | None:
    """argparse keywords for a field type; None for a type the command line cannot give."""
    hint = _plain(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint in (int, float, str):
        return {"type": hint}
    if origin in (list, tuple) and args and args[0] is str:
        return {"type": (lambda text: tuple(_items(text))) if origin is tuple else _items, "metavar": "A,B"}
    if origin is tuple and args and typing.get_origin(args[0]) is tuple:
        return {"type": _pairs, "metavar": "A:B,C:D"}
    if origin is dict and len(args) == 2 and args[0] is str and args[1] in (int, float, str):
        return {"type": _mapping(args[1]), "metavar": "NAME=VALUE,..."}
    return None


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(":".join(v) if isinstance(v, tuple) else str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = (),
                         skip: tuple[str, ...] = (), aliases: dict[str, list[str]] | None = None,
                         helps: dict[str, str] | None = None, choices: dict[str, list[str]] | None = None) -> None:
    """One flag per field of `cls` (positional ones first), plus `-c/--config RUN_YAML`. Unset flags stay
    out of the parsed namespace, so `-c` and the dataclass supply them."""
    hints = typing.get_type_hints(cls)
    comments = field_help(cls) | (helps or {})
    defaults = cls()
    parser.set_defaults(_positional=positional)
    for name in positional:
        parser.add_argument(name, nargs="?", default=argparse.SUPPRESS, help=comments.get(name))
    for f in dataclasses.fields(cls):
        if f.name in positional or f.name in skip or (keywords := _argument(hints[f.name])) is None:
            continue
        default = getattr(defaults, f.name)
        text = comments.get(f.name, "")
        if default not in (None, "", (), [], {}) and keywords.get("action") is not argparse.BooleanOptionalAction:
            text = f"{text} (default: {_shown(default)})".strip()
        elif keywords.get("action") is argparse.BooleanOptionalAction:
            text = f"{text} (default: {'on' if default else 'off'})".strip()
        flags = [f"--{f.name.replace('_', '-')}", *((aliases or {}).get(f.name, []))]
        if f.name in (choices or {}):
            keywords["choices"] = choices[f.name]
        parser.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, help=text or None, **keywords)
    parser.add_argument("-c", "--config", metavar="RUN_YAML", default=argparse.SUPPRESS,
                        help="start from the settings a finished run recorded (its run.yaml or folder); "
                             "flags given here override them")


def config_arguments(target: str, **options: Any):
    """`add_config_arguments` for the dataclass named `"module:Class"`, as a parser's deferred `configure`: the
    module (often one that imports torch) is imported only when that command runs or shows its help."""

    def configure(parser: argparse.ArgumentParser) -> None:
        import importlib

        module, _, name = target.partition(":")
        add_config_arguments(parser, getattr(importlib.import_module(module), name), **options)

    return configure


def config_from_args(cls: type, args: argparse.Namespace, command: str, required: tuple[str, ...] = ()):
    """The config this command line asks for: the dataclass defaults, then `-c run.yaml`, then the flags."""
    from celadon.runinfo import read_run_config
    from celadon.settings import build

    values = read_run_config(args.config, command) if getattr(args, "config", None) else {}
    # Flags left unset are absent (SUPPRESS); a None comes from a global option (--taxonomy) left unset.
    values |= {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
               if getattr(args, f.name, None) is not None}
    missing = [name for name in required if not values.get(name)]
    if missing:
        raise CeladonError(f"celadon {command}: give {' and '.join(_flag(m, args) for m in missing)}, or -c "
                           "RUN_YAML of an earlier run")
    return build(cls, values, f"celadon {command}")


def _flag(name: str, args: argparse.Namespace) -> str:
    return name.upper() if name in getattr(args, "_positional", ()) else f"--{name.replace('_', '-')}"


