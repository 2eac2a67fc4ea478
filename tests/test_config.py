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
    for name in ("model_url", "model_timeout", "max_image_bytes", "batch_timeout_ms", "tf_intra_op_threads"):
        assert shown[name]["source"] == "default"
