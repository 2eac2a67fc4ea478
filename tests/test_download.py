"""`pizzactl data download`: sources tried in order, layout normalised, verified once, never hangs.

The fakes sit where the network starts: a `KaggleSource` (fetch(slug, dest) -> zip or
folder), or the `kaggle` client module itself for `KaggleApiSource`. They write real zips
of real JPEGs made with Pillow, laid out like the Kaggle archive
(`pizza_not_pizza/{pizza,not_pizza}/*.jpg`).
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import threading
import types
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest

from pizzactl.config import load_settings
from pizzactl.data.dataset import load_dataset
from pizzactl.data.download import (
    MARKER,
    DownloadResult,
    KaggleApiSource,
    KaggleHubSource,
    download,
    find_class_root,
    find_credentials,
    resolve_data_dir,
    safe_extract,
)
from pizzactl.errors import EXIT_USER, CredentialsError, DownloadError

from support.cli import run_pizzactl

SLUG = "carlosrunner/pizza-not-pizza"


def jpeg(seed: int, size=(48, 40)) -> bytes:
    from PIL import Image

    img = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    for x in range(0, size[0], 4):  # some structure so images differ beyond their colour
        for y in range((seed + x) % 7, size[1], 9):
            img.putpixel((x, y), (255 - x % 256, y * 5 % 256, seed % 256))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


KAGGLE_FILES = {
    f"pizza_not_pizza/{cls}/{cls}_{i}.jpg": jpeg(i + (100 if cls == "pizza" else 0))
    for cls in ("pizza", "not_pizza")
    for i in range(4)
}


def write_kaggle_zip(path: Path, files: dict[str, bytes] = KAGGLE_FILES) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


class ZipSource:
    """Like the kaggle API with unzip=False: leaves <slug>.zip in dest."""

    def __init__(self, name="fake kaggle api"):
        self.name, self.calls = name, 0

    def fetch(self, slug, dest):
        self.calls += 1
        return write_kaggle_zip(dest / (slug.split("/")[1] + ".zip"))


class TreeSource:
    """Like kagglehub with output_dir: extracts into dest and returns it (plus its own hidden marker)."""

    def __init__(self, name="fake kagglehub"):
        self.name, self.calls = name, 0

    def fetch(self, slug, dest):
        self.calls += 1
        for rel, data in KAGGLE_FILES.items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)
        (dest / ".complete").mkdir()
        return dest


class FailingSource:
    def __init__(self, exc, name="failing"):
        self.exc, self.name, self.calls = exc, name, 0

    def fetch(self, slug, dest):
        self.calls += 1
        raise self.exc


class HangingSource:
    """A connection that never answers (what the kaggle client, which sets no timeouts, would do)."""

    name = "hanging"

    def __init__(self):
        self.release = threading.Event()

    def fetch(self, slug, dest):
        self.release.wait(30)
        raise DownloadError("released")


@pytest.fixture
def settings(isolated):
    return load_settings({}, environ={"PIZZACTL_CACHE_DIR": str(isolated / "cache")}, cwd=isolated)


@pytest.fixture
def no_credentials(tmp_path) -> dict:
    """A KaggleApiSource that looks for credentials in an empty home and environment."""
    home = tmp_path / "home"
    home.mkdir()
    return {"environ": {}, "home": home}


# --- the fallback order -------------------------------------------------------------------------


def test_without_credentials_the_anonymous_source_downloads_and_the_layout_is_normalised(settings, no_credentials):
    hub = TreeSource()
    result = download(settings, sources=[KaggleApiSource(**no_credentials), hub])

    assert hub.calls == 1
    assert result.source == "fake kagglehub" and result.downloaded
    assert result.path.name == "pizza_not_pizza"
    assert sorted(p.name for p in result.path.iterdir()) == ["not_pizza", "pizza"]
    assert result.path.is_relative_to(settings.cache_dir / "datasets")
    assert result.n_images == 8
    assert result.data_hash == load_dataset(result.path).data_hash


def test_kaggle_zip_is_extracted_and_removed(settings):
    result = download(settings, sources=[ZipSource()])
    assert result.n_images == 8
    dest = settings.cache_dir / "datasets" / "carlosrunner__pizza-not-pizza"
    assert not list(dest.rglob("*.zip"))
    marker = json.loads((dest / MARKER).read_text())
    assert marker["root"] == "unpacked/pizza_not_pizza"
    assert marker["n_images"] == 8 and marker["data_hash"] == result.data_hash


def test_when_every_source_fails_the_error_names_data_dir_and_kaggle_json(settings, no_credentials):
    boom = FailingSource(DownloadError("cannot reach Kaggle: DNS lookup failed (offline?)"), name="kagglehub")
    with pytest.raises(DownloadError) as info:
        download(settings, sources=[KaggleApiSource(**no_credentials), boom])
    assert "--data DIR" in info.value.hint and "kaggle.json" in info.value.hint
    assert "no Kaggle credentials" in info.value.message and "DNS lookup failed" in info.value.message
    assert info.value.exit_code == EXIT_USER
    assert not list((settings.cache_dir / "datasets").iterdir())  # no partial download left behind


def test_only_credential_failures_raise_credentials_error(settings, no_credentials):
    refused = FailingSource(CredentialsError("Kaggle refused an anonymous download"))
    with pytest.raises(CredentialsError) as info:
        download(settings, sources=[KaggleApiSource(**no_credentials), refused])
    assert "--data DIR" in info.value.hint


def test_a_silent_connection_times_out_instead_of_hanging(settings):
    hanging = HangingSource()
    stdout, stderr = sys.stdout, sys.stderr
    try:
        with pytest.raises(DownloadError, match=r"no data for 0\.3 s"):
            download(settings, sources=[hanging], stall_timeout=0.3)
    finally:
        hanging.release.set()
    assert (sys.stdout, sys.stderr) == (stdout, stderr)  # the quieting of library output is undone


# --- verified once ------------------------------------------------------------------------------


def test_a_verified_download_is_not_fetched_again(settings):
    source = ZipSource()
    first = download(settings, sources=[source])
    second = download(settings, sources=[source])
    assert source.calls == 1
    assert second.source == "cache" and not second.downloaded
    assert (second.path, second.data_hash, second.n_images) == (first.path, first.data_hash, first.n_images)


def test_a_tampered_download_is_fetched_again(settings):
    source = ZipSource()
    first = download(settings, sources=[source])
    victim = first.path / "pizza" / "pizza_2.jpg"
    victim.write_bytes(jpeg(999))  # still a valid image, different content
    second = download(settings, sources=[source])
    assert source.calls == 2 and second.downloaded
    assert second.data_hash == first.data_hash
    assert victim.read_bytes() == KAGGLE_FILES["pizza_not_pizza/pizza/pizza_2.jpg"]


def test_a_deleted_file_is_fetched_again(settings):
    source = TreeSource()
    first = download(settings, sources=[source])
    (first.path / "not_pizza" / "not_pizza_0.jpg").unlink()
    download(settings, sources=[source])
    assert source.calls == 2


def test_force_downloads_again(settings):
    source = ZipSource()
    download(settings, sources=[source])
    download(settings, force=True, sources=[source])
    assert source.calls == 2


def test_a_folder_that_is_not_a_download_is_never_replaced(settings, tmp_path):
    mine = tmp_path / "my_photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(jpeg(1))
    with pytest.raises(DownloadError, match="not a pizzactl download"):
        download(settings, dest=mine, sources=[ZipSource()])
    assert (mine / "holiday.jpg").exists()


def test_resolve_data_dir_prefers_data_and_otherwise_reuses_the_verified_download(settings, tmp_path):
    assert resolve_data_dir(settings.replace(data_dir=tmp_path / "given")) == tmp_path / "given"
    downloaded = download(settings, sources=[ZipSource()])
    assert resolve_data_dir(settings) == downloaded.path  # the default sources are never called


def test_result_as_dict_is_json_ready(settings):
    result = download(settings, sources=[ZipSource()])
    assert isinstance(result, DownloadResult)
    data = json.loads(json.dumps(result.as_dict()))
    assert data["path"] == str(result.path) and data["n_images"] == 8 and data["dataset"] == SLUG


# --- layout and archive safety ----------------------------------------------------------------------


def test_find_class_root_skips_wrappers_and_mac_metadata(tmp_path):
    for rel in ("a/b/classes/x/1.jpg", "a/b/classes/y/2.png", "__MACOSX/a/b/._1.jpg", "a/README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert find_class_root(tmp_path) == tmp_path / "a" / "b" / "classes"


def test_a_download_without_class_folders_is_an_error(settings):
    class OneFolder(TreeSource):
        def fetch(self, slug, dest):
            (dest / "only").mkdir()
            (dest / "only" / "1.jpg").write_bytes(jpeg(1))
            return dest

    with pytest.raises(DownloadError, match="class sub-folders"):
        download(settings, sources=[OneFolder()])


def test_zip_slip_members_are_refused(tmp_path):
    archive = write_kaggle_zip(tmp_path / "evil.zip", {"../../escaped.jpg": b"x"})
    with pytest.raises(DownloadError, match="unsafe path"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path.parent / "escaped.jpg").exists()


# --- Kaggle's own credential conventions ----------------------------------------------------------


def test_no_credentials_anywhere(no_credentials):
    assert find_credentials(**no_credentials) is None


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda home, env: env.update(KAGGLE_USERNAME="me", KAGGLE_KEY="k"), "KAGGLE_USERNAME/KAGGLE_KEY"),
        (lambda home, env: env.update(KAGGLE_API_TOKEN="KGAT_x"), "KAGGLE_API_TOKEN"),
        (lambda home, env: _write(home / ".kaggle" / "kaggle.json", '{"username":"me","key":"k"}'), "kaggle.json"),
        (lambda home, env: _write(home / ".kaggle" / "access_token", "KGAT_x"), "access_token"),
        (
            lambda home, env: _write(home / ".config" / "kaggle" / "kaggle.json", '{"username":"me","key":"k"}'),
            "kaggle.json",
        ),
        (
            lambda home, env: env.update(
                KAGGLE_CONFIG_DIR=str(_write(home / "elsewhere" / "kaggle.json", '{"username":"me","key":"k"}').parent)
            ),
            "elsewhere/kaggle.json",
        ),
    ],
    ids=["env-key", "env-token", "kaggle.json", "access_token", "xdg-kaggle.json", "KAGGLE_CONFIG_DIR"],
)
def test_credentials_are_found_where_kaggle_looks(tmp_path, setup, expected):
    env: dict = {}
    setup(tmp_path, env)
    found = find_credentials(env, tmp_path)
    assert found is not None and found.endswith(expected)


def test_a_kaggle_json_without_a_key_is_not_credentials(tmp_path):
    _write(tmp_path / ".kaggle" / "kaggle.json", '{"username": "me"}')
    assert find_credentials({}, tmp_path) is None


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- the kaggle client boundary (a fake `kaggle` package) -----------------------------------------


def fake_kaggle_package(monkeypatch, api_class):
    """Install a fake `kaggle` package so `from kaggle.api.kaggle_api_extended import KaggleApi` gets api_class."""
    root, api, extended = (types.ModuleType(n) for n in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended"))
    extended.KaggleApi = api_class
    root.api, api.kaggle_api_extended = api, extended
    for module in (root, api, extended):
        monkeypatch.setitem(sys.modules, module.__name__, module)


class FakeKaggleApi:
    """kaggle 2.x: authenticate() then dataset_download_files(slug, path=, force=, quiet=, unzip=); it prints."""

    calls: ClassVar[list] = []

    def authenticate(self):
        print("authenticated")  # the real one prints to stdout, which must not reach --json

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=None):
        if licenses is None:
            licenses = []
        FakeKaggleApi.calls.append((dataset, unzip))
        print(f"Dataset URL: https://www.kaggle.com/datasets/{dataset}")
        write_kaggle_zip(Path(path) / (dataset.split("/")[1] + ".zip"))


def test_with_credentials_the_kaggle_client_downloads_and_stdout_stays_clean(settings, monkeypatch, capsys):
    fake_kaggle_package(monkeypatch, FakeKaggleApi)
    FakeKaggleApi.calls = []
    hub = TreeSource()
    result = download(settings, sources=[KaggleApiSource(environ={"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "k"}), hub])
    assert FakeKaggleApi.calls == [(SLUG, False)]
    assert hub.calls == 0 and result.source == "kaggle api" and result.n_images == 8
    assert "Dataset URL" not in capsys.readouterr().out


def test_refused_credentials_fall_back_to_the_anonymous_source(settings, monkeypatch):
    class Refusing(FakeKaggleApi):
        def authenticate(self):
            sys.exit(1)  # what kaggle does when no credential works

    fake_kaggle_package(monkeypatch, Refusing)
    hub = TreeSource()
    result = download(settings, sources=[KaggleApiSource(environ={"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "bad"}), hub])
    assert result.source == "fake kagglehub" and hub.calls == 1


def test_an_http_401_from_kaggle_is_a_credentials_error(monkeypatch, tmp_path):
    import requests

    class Unauthorized(FakeKaggleApi):
        def dataset_download_files(self, *a, **k):
            response = requests.Response()
            response.status_code = 401
            raise requests.HTTPError("401 Client Error: Unauthorized", response=response)

    fake_kaggle_package(monkeypatch, Unauthorized)
    with pytest.raises(CredentialsError, match="HTTP 401"):
        KaggleApiSource(environ={"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "bad"}).fetch(SLUG, tmp_path)


# --- the real code, no credentials, no network ---------------------------------------------------------


@pytest.fixture
def unreachable_kaggle(monkeypatch, tmp_path):
    """No credentials, and Kaggle's test endpoint (localhost:7777) bound but not listening: refused at once."""
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 7777))
    except OSError:
        pytest.skip("port 7777 is in use; cannot make the Kaggle endpoint unreachable")
    home = tmp_path / "home"
    home.mkdir()
    for var in [v for v in os.environ if v.startswith("KAGGLE")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")  # kagglesdk: http://localhost:7777
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    yield home
    blocker.close()


def test_real_sources_without_credentials_or_network_fail_cleanly(settings, unreachable_kaggle):
    with pytest.raises(DownloadError) as info:
        download(settings, sources=[KaggleApiSource(home=unreachable_kaggle), KaggleHubSource()], stall_timeout=20)
    assert "no Kaggle credentials" in info.value.message
    assert "cannot reach Kaggle" in info.value.message
    assert "--data DIR" in info.value.hint


def test_cli_download_offline_exits_3_with_the_hint(isolated, unreachable_kaggle):
    env = {k: v for k, v in os.environ.items()}
    proc = run_pizzactl("data", "download", "--json", env=env, cwd=isolated, timeout=120)
    assert proc.returncode == EXIT_USER, proc.stderr
    assert proc.stdout == ""  # nothing from the kaggle libraries leaks onto stdout
    assert "--data DIR" in proc.stderr and "kaggle.json" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_download_reuses_a_verified_download_without_network(settings, isolated, unreachable_kaggle):
    first = download(settings, sources=[ZipSource()])
    proc = run_pizzactl("data", "download", "--json", env=dict(os.environ), cwd=isolated, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["path"] == str(first.path) and data["source"] == "cache" and data["downloaded"] is False
    assert data["data_hash"] == first.data_hash
