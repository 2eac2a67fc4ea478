"""files.py: atomic replacement of files and folders, and the one wait-until loop."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from pizzactl.errors import DeployError, PizzaError, WaitTimeoutError
from pizzactl.files import atomic_dir, atomic_open, atomic_write, wait_until, write_json


def test_atomic_write_replaces_bytes_and_text(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write(path, "héllo")
    assert path.read_text() == "héllo"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]  # no temp file left behind


def test_write_json_is_indented_and_stringifies(tmp_path):
    path = tmp_path / "state.json"
    write_json(path, {"path": tmp_path, "n": 1})
    assert json.loads(path.read_text()) == {"path": str(tmp_path), "n": 1}
    assert path.read_text().endswith("\n")


def test_an_error_mid_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "state.json"
    write_json(path, {"old": True})
    with pytest.raises(RuntimeError), atomic_open(path) as fh:
        fh.write(b'{"new": tr')
        raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path):
    """A real crash: the writer dies (no cleanup runs) after half of the new content is on disk."""
    path = tmp_path / "state.json"
    write_json(path, {"old": True})
    script = textwrap.dedent(
        f"""
        import os
        from pizzactl.files import atomic_open
        with atomic_open({str(path)!r}) as fh:
            fh.write(b'{{"new": tr')
            fh.flush()
            os._exit(9)
        """
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    assert json.loads(path.read_text()) == {"old": True}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "state.json"]
    assert leftovers and all(name.startswith(".state.json.tmp-") for name in leftovers)  # a dot name


def test_atomic_dir_replaces_a_folder_or_leaves_it(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest) as staging:
        (staging / "a").write_text("1")
    assert [p.name for p in dest.iterdir()] == ["a"]
    with pytest.raises(RuntimeError), atomic_dir(dest) as staging:
        (staging / "b").write_text("2")
        raise RuntimeError("interrupted")
    assert [p.name for p in dest.iterdir()] == ["a"]
    with atomic_dir(dest) as staging:
        (staging / "c").write_text("3")
    assert [p.name for p in dest.iterdir()] == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_wait_until_returns_the_first_true_value():
    answers = iter([None, 0, "ready"])
    assert wait_until(lambda: next(answers), timeout=60, interval=0, what="x") == "ready"


def test_wait_until_timeout_says_what_it_waited_for():
    calls = []
    with pytest.raises(WaitTimeoutError) as info:
        wait_until(lambda: calls.append(1), timeout=0, what="pod copy-1 to be deleted", hint="Look at it.")
    assert str(info.value) == "Timed out after 0s waiting for pod copy-1 to be deleted."
    assert info.value.hint == "Look at it."
    assert isinstance(info.value, PizzaError) and len(calls) == 1


def test_wait_until_checks_once_more_at_the_deadline():
    calls = []
    slept = []

    def sleep(seconds):  # a real sleep (it lasts at least `seconds`), recorded
        slept.append(seconds)
        time.sleep(seconds)

    with pytest.raises(DeployError):
        wait_until(lambda: calls.append(1), timeout=0.01, interval=5, what="x", error=DeployError, sleep=sleep)
    assert len(calls) == 2 and len(slept) == 1 and slept[0] <= 0.01  # not the 5 s interval


def test_wait_until_first_polls_soon_then_backs_off_to_the_interval():
    """A wait that is over in a moment returns in a moment; a long one settles at `interval`."""
    slept = []
    answers = iter([False] * 7 + [True])
    assert wait_until(lambda: next(answers), 60, 2.0, first=0.1, what="x", sleep=slept.append)
    assert slept == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


def test_wait_until_without_error_returns_the_last_false_value():
    assert wait_until(lambda: [], timeout=0, what="x", error=None) == []


def test_a_predicate_exception_ends_the_wait():
    def died():
        raise DeployError("The model server exited.")

    with pytest.raises(DeployError, match="exited"):
        wait_until(died, timeout=60, what="x")


def test_atomic_dir_without_replace_never_removes_what_took_the_name(tmp_path):
    dest = tmp_path / "run"
    with pytest.raises(OSError), atomic_dir(dest, replace=False) as staging:
        (staging / "new").write_text("1")
        dest.mkdir()  # another process took the name meanwhile
        (dest / "theirs").write_text("2")
    assert [p.name for p in dest.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
