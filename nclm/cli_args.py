"""How each `nclm` command group registers its subcommands with argparse (nclm/cli.py).

A group is `nclm NAME COMMAND ...`; every parser sets `command_parser` (whose usage a bad argument
prints), and every subcommand `func(args, overrides)`, plus `accepts_overrides` when it takes
`--config.key=value` items. Only argparse here, so every package may register its commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def command_group(
    groups: argparse._SubParsersAction, name: str, help_text: str, title: str, metavar="COMMAND"
) -> argparse._SubParsersAction:
    """Adds `nclm NAME` and returns its subcommands (listed under `title`)."""
    group = groups.add_parser(name, help=help_text)
    group.set_defaults(command_parser=group)
    return group.add_subparsers(title=title, metavar=metavar)


def set_command(
    parser: argparse.ArgumentParser, run: Callable, overrides: bool = False
) -> argparse.ArgumentParser:
    """`parser` runs `run(args)`, or `run(args, overrides)` when it accepts overrides."""
    if overrides:
        parser.set_defaults(func=run, command_parser=parser, accepts_overrides=True)
    else:
        parser.set_defaults(func=lambda args, _: run(args), command_parser=parser)
    return parser


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    help_text: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable,
    overrides: bool = False,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand whose options come from `add_arguments(parser)`, run as in `set_command`."""
    parser = sub.add_parser(name, help=help_text, description=description)
    add_arguments(parser)
    return set_command(parser, run, overrides)
