"""Command-line options generated from a config dataclass.

The dataclass is the one declaration of each option's name, type and default; the CLI adds only
the help text and, where a flag reads better than the field's name, that flag. ``config_from_args``
is the one way back from parsed arguments to the config. Torch-free: the edge commands use it too.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


def number(kind=int, *, low=None, high=None, low_open: bool = False):
    """An argparse ``type=`` that parses ``kind`` and refuses values outside [low, high] ((low, high] if low_open)."""
    name = "an integer" if kind is int else "a number"
    bounds = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}]"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
        below = low is not None and (value <= low if low_open else value < low)
        if below or (high is not None and value > high) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"{text} is outside {bounds}")
        return value

    return parse


@dataclass(frozen=True)
class Option:
    """The command-line face of one config field."""

    help: str = ""
    flag: str | None = None  # default: --field-name; for a bool field, the flag that turns its default around
    choices: tuple | None = None
    none_flag: str | None = None  # a second flag that sets the field to None (e.g. --no-val for val_split)
    none_help: str | None = None
    parse: Callable[[str], Any] | None = (
        None  # an argparse ``type`` that also checks the range; default: the field's type
    )
    positional: bool = False  # an argument without a flag (a ``tuple[X, ...]`` field takes one or more)
    old_flag: str | None = None  # the flag's previous spelling: still accepted for one release, with a note on stderr
    many: bool = False  # a ``tuple[X, ...]`` field's flag takes one or more space-separated values (not a comma list)


@dataclass(frozen=True)
class Binding:
    """How one subcommand's parsed arguments become its config (kept in the parsed arguments as ``binding``)."""

    config_type: type
    # options in other units or shapes than their field: option dest -> (field, conversion of the parsed value)
    converted: Mapping[str, tuple[str, Callable[[Any], Any]]] = dataclasses.field(default_factory=dict)
    # options that steer the command itself and are no field of the config: option dest -> why
    own: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def config(self, args: argparse.Namespace):
        names = {f.name for f in dataclasses.fields(self.config_type)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}
        values |= {name: convert(getattr(args, dest)) for dest, (name, convert) in self.converted.items()}
        return self.config_type(**values)


def field_default(f: dataclasses.Field) -> Any:
    """A field's default (its factory called), or ``dataclasses.MISSING`` for a required field."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def comma_separated(item_type: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(item_type(s.strip()) for s in text.split(",") if s.strip())

    parse.__name__ = f"comma-separated {item_type.__name__}"  # argparse names it in "invalid ... value"
    return parse


def parse_type(hint: Any) -> Callable[[str], Any]:
    """The argparse ``type`` for a field annotation: ``X | None`` parses as X, ``tuple[X, ...]`` as a comma list."""
    args = typing.get_args(hint)
    if type(None) in args:
        (hint,) = (a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return comma_separated(typing.get_args(hint)[0])
    return hint


def shown(default: Any) -> str:
    text = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
    return text.replace("%", "%%")


def add_positional(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: Any, option: Option) -> None:
    many = typing.get_origin(hint) is tuple
    item = typing.get_args(hint)[0] if many else hint
    parser.add_argument(f.name, nargs="+" if many else None, type=option.parse or item, help=option.help)


class RenamedFlag(argparse._StoreAction):
    """A valued option that also answers to its previous spelling, hidden from --help, saying so on stderr."""

    def __init__(self, option_strings, dest, old_flag: str, **kwargs):
        super().__init__([*option_strings, old_flag], dest, **kwargs)
        self.old_flag = old_flag

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string == self.old_flag:
            print(
                f"{parser.prog}: {self.old_flag} is now {self.option_strings[0]}; the old spelling goes away in the next "
                "release",
                file=sys.stderr,
            )
        super().__call__(parser, namespace, values, option_string)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples shown as written; a renamed flag's old spelling left out (it is for old scripts, not for readers)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, RenamedFlag):
            action = copy.copy(action)
            action.option_strings = action.option_strings[:1]
        return super()._format_action_invocation(action)


def add_argument(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: Any, option: Option) -> None:
    if option.positional:
        add_positional(parser, f, hint, option)
        return
    default = field_default(f)
    flag = option.flag or "--" + f.name.replace("_", "-")
    if option.none_flag:  # the value or None, not both
        parser = parser.add_mutually_exclusive_group()
    if hint is bool:
        parser.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", help=option.help)
        return
    kwargs: dict[str, Any] = {"dest": f.name, "type": option.parse or parse_type(hint), "choices": option.choices}
    if option.old_flag:
        kwargs |= {
            "action": RenamedFlag,
            "old_flag": option.old_flag,
            "metavar": flag.lstrip("-").replace("-", "_").upper(),
        }
    if option.many:
        kwargs |= {"nargs": "+", "type": option.parse or typing.get_args(hint)[0]}
    if default is dataclasses.MISSING:
        kwargs["required"] = True
        help_text = option.help
    else:
        kwargs["default"] = default
        with_default = f"{option.help} (default: {shown(default)})".strip()
        help_text = option.help if default is None or "default" in option.help else with_default
    parser.add_argument(flag, help=help_text, **kwargs)
    if option.none_flag:
        none = {"action": "store_const", "const": None, "default": default, "help": option.none_help}
        parser.add_argument(option.none_flag, dest=f.name, **none)


def add_config_options(
    parser: argparse.ArgumentParser,
    config_type: type,
    options: Mapping[str, Option],
    *,
    converted: Mapping[str, tuple[str, Callable[[Any], Any]]] | None = None,
    own: Mapping[str, str] | None = None,
) -> None:
    """One option per entry of ``options`` (field name -> its help), typed and defaulted by the field itself.

    Options added to ``parser`` by hand must be named in ``converted`` or ``own`` (a test holds every
    subcommand to that).
    """
    hints = typing.get_type_hints(config_type)
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise TypeError(f"{config_type.__name__} has no field(s) {unknown}")
    for name, option in options.items():
        add_argument(parser, fields[name], hints[name], option)
    parser.set_defaults(binding=Binding(config_type, dict(converted or {}), dict(own or {})))


def add_command(
    subparsers,
    name: str,
    config_type: type,
    options: Mapping[str, Option],
    run: Callable[[argparse.Namespace], int],
    *,
    help: str,
    epilog: str,
    description: str | None = None,
    converted: Mapping[str, tuple[str, Callable[[Any], Any]]] | None = None,
    own: Mapping[str, str] | None = None,
) -> argparse.ArgumentParser:
    """The subcommand ``name``: ``config_type``'s fields in ``options`` as its options, ``run(args)`` as its action;
    ``epilog`` (examples) is shown as written."""
    parser = subparsers.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=HelpFormatter
    )
    add_config_options(parser, config_type, options, converted=converted, own=own)
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace):
    """The config of the subcommand that parsed ``args`` (declared with ``add_config_options``)."""
    return args.binding.config(args)
