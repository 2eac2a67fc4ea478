"""`pizzactl config show`: every setting, its value and where it came from."""

from __future__ import annotations

from rich.table import Table

from pizzactl.cli.base import JsonOpt, config_app, settings
from pizzactl.console import out, print_json


@config_app.command("show")
def config_show(json_out: bool = JsonOpt) -> None:
    """Print every setting, its value and where it came from."""
    s = settings()
    values = s.as_dict()
    if json_out:
        print_json({name: {"value": value, "source": s.sources[name]} for name, value in values.items()})
        return
    table = Table("setting", "value", "source")
    for name, value in values.items():
        table.add_row(name, "" if value is None else str(value), s.sources[name])
    out.print(table)
