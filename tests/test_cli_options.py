"""Every `floraedge` subcommand's options reach its config dataclass, and every default is the dataclass's.

The real top-level parser is walked: a subcommand added later is checked without editing this file.
Each option is proved by use, not by name: parsed with a value other than its default, it must
change the config (in its own field, or in the field its declared conversion names).
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest

import floraedge
from edge_runtime.options import Binding, Option, RenamedFlag, add_config_options, config_from_args, field_default

CANDIDATES = ("7", "0.25", "custom", "3,5", "64")  # values to try, in order, for an option that takes one


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = floraedge.build_parser()
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = subcommands()


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def a_value(action: argparse.Action, unlike=None) -> str:
    """A command-line string that parses, for ``action``, to something other than ``unlike``."""
    parse = action.type or str
    for text in CANDIDATES:
        try:
            value = parse(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            continue
        if value != unlike and (action.choices is None or value in action.choices):
            return text
    if action.choices is not None:
        return next(str(c) for c in action.choices if c != unlike)
    raise AssertionError(f"no test value for {action.option_strings or action.dest}")


def argv(action: argparse.Action, value: str | None) -> list[str]:
    if not action.option_strings:
        return [value]
    return [action.option_strings[0]] + ([] if value is None else [value])


def required_argv(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in options(parser) if a.required for s in argv(a, a_value(a))]


def changed_argv(action: argparse.Action) -> list[str]:
    """The option used so that it changes its destination (a flag alone for the store_* actions)."""
    if action.nargs == 0:
        return argv(action, None)
    return argv(action, a_value(action, unlike=action.default))


def problems(parser: argparse.ArgumentParser) -> list[str]:
    """What keeps ``parser``'s options from being exactly its config's fields, defaults and all."""
    binding = parser.get_default("binding")
    if not isinstance(binding, Binding):
        return ["options declared by hand: use edge_runtime.options.add_config_options"]
    fields = {f.name: f for f in dataclasses.fields(binding.config_type)}
    found = []
    for action in options(parser):
        if action.dest not in fields and action.dest not in binding.converted and action.dest not in binding.own:
            found.append(f"{action.option_strings}: {action.dest!r} is no field of {binding.config_type.__name__}")
        elif action.dest in fields and not action.required and action.default != field_default(fields[action.dest]):
            found.append(f"{action.option_strings}: default {action.default!r} is not the dataclass's")
        elif action.dest in binding.converted:
            name, convert = binding.converted[action.dest]
            if convert(action.default) != field_default(fields[name]):
                found.append(f"{action.option_strings}: default {action.default!r} converts to another {name}")
    base_argv = required_argv(parser)
    base = binding.config(parser.parse_args(base_argv))
    given = {a.dest for a in options(parser) if a.required} | {b[0] for b in binding.converted.values()}
    found += [
        f"{f.name} is not the dataclass default"
        for f in fields.values()
        if f.name not in given and getattr(base, f.name) != field_default(f)
    ]
    for action in options(parser):
        if action.required or action.dest not in fields | binding.converted | binding.own:
            continue
        config = binding.config(parser.parse_args(base_argv + changed_argv(action)))
        changed = {f for f in fields if getattr(config, f) != getattr(base, f)}
        if action.dest in binding.own:
            expected = set()  # it steers the command, never the config
        else:
            expected = {binding.converted[action.dest][0] if action.dest in binding.converted else action.dest}
        if changed != expected:
            found.append(f"{action.option_strings} changed {sorted(changed)}, not {sorted(expected)}")
    return found


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS), ids=str)
def test_every_option_reaches_the_config_and_every_default_is_the_configs(name):
    assert problems(SUBCOMMANDS[name]) == []


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toy:
    model: str
    threads: int = 2
    limit: int | None = None


def test_the_check_catches_a_drifted_default_a_stray_option_and_a_dead_one():
    """What went wrong before: a default typed twice that drifted, an option that reached nothing (serve --camera)."""
    parser = argparse.ArgumentParser()
    add_config_options(parser, Toy, {"model": Option("m"), "limit": Option("l")})
    parser.add_argument("--threads", type=int, default=4)  # by hand, with another default
    parser.add_argument("--camera", default=None)  # declared, never used
    parser.add_argument("--host", default="127.0.0.1")
    binding = parser.get_default("binding")
    parser.set_defaults(binding=dataclasses.replace(binding, own={"host": "the server's address"}))
    found = problems(parser)
    assert any("default 4" in p for p in found) and any("'camera' is no field" in p for p in found), found
    assert not any("--host" in p or "--limit" in p for p in found), found


def test_the_check_catches_a_converted_option_whose_default_disagrees():
    """--max-body-mb is max_body in MiB: its default must convert to the field's default."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads-x2", type=int, default=2)  # would give threads=1, the field says 2
    add_config_options(parser, Toy, {"model": Option("m")}, converted={"threads_x2": ("threads", lambda v: v // 2)})
    assert any("--threads-x2" in p and "converts" in p for p in problems(parser)), problems(parser)


def test_a_positional_tuple_field_takes_one_or_more_values():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Images:
        images: tuple[str, ...]
        json: bool = False

    parser = argparse.ArgumentParser()
    add_config_options(parser, Images, {"images": Option("files", positional=True), "json": Option()})
    assert problems(parser) == []
    config = config_from_args(parser.parse_args(["a.jpg", "b.jpg", "--json"]))
    assert config == Images(images=("a.jpg", "b.jpg"), json=True)


def kind(action: argparse.Action) -> str:
    """What an option takes: nothing (a switch), a list, or one value."""
    if action.nargs == 0:
        return "switch"
    if action.nargs in ("+", "*") or getattr(action.type, "__name__", "").startswith("comma-separated"):
        return "list"
    return "value"


def test_a_flag_takes_the_same_kind_of_value_in_every_subcommand():
    """One meaning per flag: `--threads` is one count wherever it is shown (bench's list is --thread-counts)."""
    seen: dict[str, dict[str, str]] = {}
    for name, parser in SUBCOMMANDS.items():
        for action in options(parser):
            shown = action.option_strings[:1] if isinstance(action, RenamedFlag) else action.option_strings
            for flag in shown:
                seen.setdefault(flag, {})[name] = kind(action)
    mixed = {flag: kinds for flag, kinds in seen.items() if len(set(kinds.values())) > 1}
    assert mixed == {}
    assert {"train", "run", "serve"} <= set(seen["--threads"]) and set(seen["--thread-counts"]) == {"bench"}
    assert "bench" not in seen["--threads"]
    assert {"prepare", "train"} <= set(seen["--workers"]) and "serve" not in seen["--workers"]


@pytest.mark.parametrize(
    "old, new, field, value",
    [
        (
            ["bench", "--models", "m", "--data", "d", "--out", "o", "--threads", "1,2"],
            "--thread-counts",
            "threads",
            (1, 2),
        ),
        (["serve", "--model", "m.onnx", "--workers", "3"], "--concurrency", "workers", 3),
    ],
    ids=["bench --threads", "serve --workers"],
)
def test_a_renamed_flag_still_works_for_one_release_says_so_and_is_hidden_from_help(old, new, field, value, capsys):
    config = config_from_args(floraedge.build_parser().parse_args(old))
    assert getattr(config, field) == value
    note = capsys.readouterr().err.strip()
    assert note.count("\n") == 0 and f"{old[-2]} is now {new}" in note, note
    current = [new if arg == old[-2] else arg for arg in old]
    assert config_from_args(floraedge.build_parser().parse_args(current)) == config
    assert capsys.readouterr().err == ""
    help_text = SUBCOMMANDS[old[0]].format_help()
    assert new in help_text and f"{old[-2]} " not in help_text


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS), ids=str)
def test_help_shows_every_option_with_its_default(name):
    """A valued option with a default says it in --help (its help text names the value, or argparse adds it)."""
    parser = SUBCOMMANDS[name]
    formatter = parser._get_formatter()
    missing = []
    for action in options(parser):
        if action.nargs == 0 or not action.option_strings or action.default in (None, argparse.SUPPRESS):
            continue
        shown = formatter._expand_help(action) if action.help else ""
        if "default" not in shown:
            missing.append(action.option_strings[0])
    assert missing == []
