"""Commands that other installed packages contribute to ``bnn-tune``.

The CLI lives in ``service`` and never imports ``worker``, ``bnn_core`` or torch; the commands
that run training code in-process (``worker``, ``train``) come from the ``worker`` package
through the entry-point group ``bnn_tune.commands`` (see ``pyproject.toml``).

Contract:

* Each entry point of the group names a callable ``register(subparsers)`` that adds its
  subcommands with ``subparsers.add_parser(name, help=..., description=...)`` and sets the
  default ``func`` (``Namespace -> exit status``). A command whose arguments all belong to
  another program (``train`` hands them to ``bnn-train``) also sets ``raw_args=True``; it then
  gets ``args.raw_args``, the words after its name, unparsed (``--help`` included).
* :data:`EXPECTED` names the commands an install of the ``worker`` package provides. Where none
  is registered (an image without the worker package, or an entry point that fails to load),
  a stand-in takes its place that says so in one line and exits 2: never argparse's
  "invalid choice" and never a traceback.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from typing import Any

from service.cli.errors import CliError

__all__ = ["ENTRY_POINT_GROUP", "EXPECTED", "add_plugin_commands"]

ENTRY_POINT_GROUP = "bnn_tune.commands"
EXPECTED: dict[str, str] = {
    "worker": "run a training worker: claim trials from the database and train them",
    "train": "one training run without tuning (same as bnn-train; try `bnn-tune train --help`)",
}


def add_plugin_commands(sub: Any) -> None:
    """Register every installed contribution, then a stand-in for each expected command that
    none provided."""
    problems: list[str] = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            entry.load()(sub)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            problems.append(f"{entry.value} failed to load ({type(exc).__name__}: {exc})")
    for name, summary in EXPECTED.items():
        if name not in sub.choices:
            _add_stand_in(sub, name, summary, problems)


def _add_stand_in(sub: Any, name: str, summary: str, problems: list[str]) -> None:
    why = "; ".join(problems) or "the worker package is not installed here"
    message = (
        f"{why}; `bnn-tune {name}` needs it and torch: pip install 'bnn-tune[train]' "
        "(or use the worker image)"
    )

    def unavailable(args: argparse.Namespace) -> int:
        raise CliError(message)

    parser = sub.add_parser(name, help=f"{summary} [not installed]", description=message)
    parser.add_argument("raw_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=unavailable, raw_args=True)
