"""Config layering: defaults -> ./pizzactl.toml -> PIZZACTL_* -> flags, with the source of each value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pizzactl.config import load_settings
from pizzactl.errors import EXIT_USER, ConfigError

from support.cli import run_pizzactl


def test_defaults_when_nothing_is_set(tmp_path):
    s = load_settings(cwd=tmp_path, environ={})
    assert s.port == 9696
    assert s.sources["port"] == "default"


def test_each_layer_overrides_the_one_before(tmp_path):
    (tmp_path / "pizzactl.toml").write_text('epochs = 7\nport = 8000\nbackbone = "small_cnn"\nseed = 1\n')
    env = {"PIZZACTL_PORT": "8001", "PIZZACTL_SEED": "2"}
    s = load_settings({"seed": 3, "epochs": None}, cwd=tmp_path, environ=env)
    assert (s.backbone, s.epochs, s.port, s.seed) == ("small_cnn", 7, 8001, 3)
    assert s.sources["backbone"].endswith("pizzactl.toml")
    assert s.sources["port"] == "PIZZACTL_PORT"
    assert s.sources["seed"] == "flag"
    assert s.sources["epochs"].endswith("pizzactl.toml")  # a flag left as None does not override


def test_types_are_coerced_from_strings(tmp_path):
    env = {
        "PIZZACTL_AUGMENT": "no",
        "PIZZACTL_MODELS_DIR": "~/m",
        "PIZZACTL_IMAGE_SIZE": "128",
        "PIZZACTL_VAL_SPLIT": "0.3",
    }
    s = load_settings(cwd=tmp_path, environ=env)
    assert s.augment is False
    assert s.models_dir == Path("~/m").expanduser()
    assert s.image_size == 128 and s.val_split == 0.3


@pytest.mark.parametrize(
    "toml, env",
    [("epochs = 'many'\n", {}), ("", {"PIZZACTL_PORT": "http"}), ("colour = 'red'\n", {}), ("not toml [", {})],
)
def test_bad_values_raise_config_error_with_a_hint(tmp_path, toml, env):
    (tmp_path / "pizzactl.toml").write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(cwd=tmp_path, environ=env)
    assert info.value.hint
    assert info.value.exit_code == EXIT_USER


def config_show(cwd: Path, env: dict[str, str]) -> dict:
    """`pizzactl config show --json` in a fresh process."""
    return json.loads(run_pizzactl("config", "show", "--json", cwd=cwd, env=env, check=True).stdout)


def test_config_show_json_reports_values_and_sources(tmp_path):
    (tmp_path / "pizzactl.toml").write_text("epochs = 5\n")
    env = {"PIZZACTL_PORT": "8123", "PATH": "/usr/bin:/bin"}
    shown = config_show(tmp_path, env)
    assert shown["epochs"] == {"value": 5, "source": str(tmp_path / "pizzactl.toml")}
    assert shown["port"] == {"value": 8123, "source": "PIZZACTL_PORT"}
    assert shown["seed"]["source"] == "default"


def test_the_servers_configurations_are_views_of_the_settings(tmp_path):
    from pizzactl.serving.modelserver.server import ModelServerConfig
    from pizzactl.serving.pipeline import GatewayConfig

    (tmp_path / "pizzactl.toml").write_text("max_batch_size = 8\nmodel_port = 8600\n")
    env = {"PIZZACTL_BATCH_TIMEOUT_MS": "2.5", "PIZZACTL_MAX_BATCH_ITEMS": "4", "PIZZACTL_ALLOW_PRIVATE_URLS": "yes"}
    s = load_settings({"batch_threads": 2}, cwd=tmp_path, environ=env)
    model = ModelServerConfig.from_settings(s)
    assert (model.max_batch_size, model.batch_timeout_ms, model.batch_threads) == (8, 2.5, 2)
    gateway = GatewayConfig.from_settings(s)
    assert (gateway.max_batch_items, gateway.allow_private_urls) == (4, True)
    assert gateway.model_url == "http://127.0.0.1:8600"  # follows the model server's port unless set
    assert GatewayConfig.from_settings(s.replace(model_url="http://models:1")).model_url == "http://models:1"


@pytest.mark.parametrize("module", ["pizzactl.serving.modelserver", "pizzactl.serving.gateway"])
def test_a_server_with_a_bad_setting_exits_with_the_hint_not_a_traceback(tmp_path, module):
    env = {"PIZZACTL_MAX_BATCH_SIZE": "lots", "PIZZACTL_MODEL_TIMEOUT": "soon", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", module, "--port", "1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == EXIT_USER
    assert "Traceback" not in proc.stderr
    assert "PIZZACTL_" in proc.stderr and "must be" in proc.stderr


def test_config_show_lists_the_servers_settings(tmp_path):
    env = {"PIZZACTL_MAX_BATCH_SIZE": "16", "PATH": "/usr/bin:/bin"}
    shown = config_show(tmp_path, env)
    assert shown["max_batch_size"] == {"value": 16, "source": "PIZZACTL_MAX_BATCH_SIZE"}
    for name in ("model_timeout", "max_image_bytes", "batch_timeout_ms", "tf_intra_op_threads"):
        assert shown[name]["source"] == "default"
    assert shown["model_url"] == {"value": "http://127.0.0.1:8501", "source": "derived (model_port)"}


# --- derived defaults: resolved once, in config, and printed by config show -------------------


def test_config_show_prints_the_model_server_deploy_uses_on_arm64(tmp_path):
    env = {"PIZZACTL_PLATFORM": "linux/arm64", "PATH": "/usr/bin:/bin"}
    shown = config_show(tmp_path, env)
    assert shown["model_server"]["value"] == "builtin"
    assert shown["model_server"]["source"].startswith("derived")
    from pizzactl.kube.images import choose_model_server

    settings = load_settings(cwd=tmp_path, environ=env)
    assert choose_model_server(settings, "linux/arm64") == shown["model_server"]["value"]


def test_a_derived_value_follows_the_facts_and_a_set_one_wins(tmp_path):
    from pizzactl.config import resolve

    s = load_settings(cwd=tmp_path, environ={})
    arm = resolve(s, platform="linux/arm64")
    assert (arm.model_server, arm.explicit("model_server")) == ("builtin", False)
    back = resolve(arm, platform="linux/amd64")  # a derived value is re-derived, not kept
    assert (back.model_server, back.source("model_server")) == ("tfserving", "default")
    mine = load_settings(cwd=tmp_path, environ={"PIZZACTL_MODEL_SERVER": "tfserving"})
    assert resolve(mine, platform="linux/arm64").model_server == "tfserving"  # refused later, with a hint
    assert mine.explicit("model_server") and not s.explicit("model_server")


def test_the_deployed_url_wins_over_an_env_endpoint_but_not_over_the_flag(tmp_path):
    from pizzactl.config import resolve

    env = {"PIZZACTL_ENDPOINT": "http://env:1"}
    s = resolve(load_settings(cwd=tmp_path, environ=env), deployed_url="http://deployed:2")
    assert (s.endpoint, s.source("endpoint")) == ("http://deployed:2", "derived (the deploy state)")
    flag = resolve(load_settings({"endpoint": "http://flag:3"}, cwd=tmp_path, environ=env), deployed_url="http://d:2")
    assert flag.endpoint == "http://flag:3"


# --- each setting declared once ----------------------------------------------------------------


def test_the_servers_have_no_second_defaults():
    """Their configurations take every setting from Settings; the client's defaults are the declared ones."""
    import dataclasses
    import inspect

    from pizzactl.config import DECLARATIONS
    from pizzactl.serving.client import ModelClient
    from pizzactl.serving.modelserver.server import ModelServerConfig
    from pizzactl.serving.pipeline import GatewayConfig

    for config in (ModelServerConfig, GatewayConfig):
        for f in dataclasses.fields(config):
            if f.name in DECLARATIONS:
                assert f.default is dataclasses.MISSING, f"{config.__name__}.{f.name} has a default of its own"
    params = inspect.signature(ModelClient).parameters
    assert params["timeout"].default == DECLARATIONS["model_timeout"].default
    assert params["max_concurrency"].default == DECLARATIONS["max_concurrency"].default


def test_every_setting_is_in_the_configuration_docs_with_its_default():
    from pizzactl.config import DECLARATIONS, settings_table

    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert settings_table() in text, "docs/configuration.md is stale: python -m pizzactl.config --docs rewrites it"
    for d in DECLARATIONS.values():
        assert f"| `{d.name}` | {d.default_text.replace('<', chr(92) + '<')} |" in text


# --- the CLI's options are made from the declarations ---------------------------------------------


def _cli_options():
    """(command path, click option) for every option of every pizzactl command."""
    import typer.main

    from pizzactl.cli import app

    def walk(command, path):  # typer's click (typer._click) or click: duck-typed
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            for param in command.params:
                if param.param_type_name == "option":
                    yield " ".join(path), param

    return list(walk(typer.main.get_command(app), []))


# a verb's own parameter that happens to share a setting's flag name (not that setting)
OWN_PARAMETERS = {("bench train", "--epochs"), ("data split", "--seed")}


def test_every_settings_flag_carries_the_declared_help_and_default():
    from pizzactl.config import DECLARATIONS

    by_flag = {d.flag: d for d in DECLARATIONS.values() if d.flag}
    seen = set()
    for command, param in _cli_options():
        d = next((by_flag[o] for o in param.opts if o in by_flag), None)
        if d is None or (command, param.opts[0]) in OWN_PARAMETERS:
            continue
        seen.add(d.name)
        where = f"pizzactl {command} {param.opts[0]}"
        assert param.help == d.help, f"{where}: help typed by hand instead of config.py's"
        shown = d.default_text if d.default_text != "unset" else False
        assert param.show_default == shown, f"{where}: default typed by hand instead of config.py's"
        assert param.default is None, f"{where}: an unset flag must not override pizzactl.toml or PIZZACTL_*"
    assert {"models_dir", "port", "model_server", "weights", "endpoint", "train_cpu"} <= seen


def test_the_models_directory_is_models_everywhere(tmp_path):
    """`--models` names models_dir on every command that takes it; the old names are hidden aliases."""
    visible: dict[str, set[str]] = {}
    for command, param in _cli_options():
        if {"--models", "--output", "--to"} & set(param.opts) and command != "rollback":  # its --to is a version
            visible.setdefault(command, set()).update(() if param.hidden else param.opts)
    assert {"train", "export", "serve", "deploy", "up", "evaluate", "build"} <= set(visible)
    assert all(flags == {"--models"} for flags in visible.values()), visible
    hidden = {(command, param.opts[0]) for command, param in _cli_options() if param.hidden}
    assert {("train", "--output"), ("export", "--to")} <= hidden  # old scripts keep working


def test_a_deprecated_alias_gives_the_same_setting_and_the_new_flag_wins():
    from pizzactl.cli.base import deprecated

    assert deprecated(None, Path("old"), "models_dir", "--output") == Path("old")
    assert deprecated(Path("new"), Path("old"), "models_dir", "--output") == Path("new")
    assert deprecated(Path("new"), None, "models_dir", "--output") == Path("new")


@pytest.mark.parametrize("module", ["pizzactl.serving.modelserver", "pizzactl.serving.gateway"])
def test_the_servers_flags_say_the_declared_env_name_and_default(module):
    from pizzactl.config import DECLARATIONS

    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "4000"}  # argparse wraps help at COLUMNS: one line per flag
    text = subprocess.run(
        [sys.executable, "-m", module, "--help"], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    named = [d for d in DECLARATIONS.values() if d.env in text]
    assert len(named) >= 4
    for d in named:
        assert f"(env {d.env}; default {d.default_text})" in text, f"{module} --help: {d.name} typed by hand"
