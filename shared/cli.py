"""The `fleetline` command. Platform commands live here; services add theirs through the
`fleetline.cli` entry-point group (name = "module:typer_app"), so `shared` imports no service."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="fleetline: event-driven services on AWS")


def _load_plugins() -> None:
    for ep in entry_points(group="fleetline.cli"):
        plugin = ep.load()
        if isinstance(plugin, typer.Typer):
            app.add_typer(plugin, name=ep.name)


def main() -> None:
    _load_plugins()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
