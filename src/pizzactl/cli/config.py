"""`pizzactl config show`: every setting, its value and where it came from."""

from __future__ import annotations

from rich.table import Table

from pizzactl.cli.base import JsonOpt, config_app, settings
from pizzactl.config import resolve
from pizzactl.console import out, print_json
from pizzactl.deploy.state import deployed_url
from pizzactl.kube.docker_daemon import local_platform


@config_app.command("show")
def config_show(json_out: bool = JsonOpt) -> None:
    """Print every setting, its value and where it came from (derived ones say from what)."""
    s = settings()
    # the derived defaults as the verbs derive them, from this machine's facts (deploy derives
    # model_server again from the platform it builds for: the Docker daemon's or the nodes')
    s = resolve(s, platform=s.platform or local_platform(), deployed_url=deployed_url(s))
    values = s.as_dict()
    if json_out:
        print_json({name: {"value": value, "source": s.sources[name]} for name, value in values.items()})
        return
    table = Table("setting", "value", "source")
    for name, value in values.items():
        table.add_row(name, "" if value is None else str(value), s.sources[name])
    out.print(table)
