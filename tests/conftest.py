"""Shared fixtures: real shared photos, isolated settings, and test tiers.

Tiers (markers): slow, docker, browser, torch. A tier whose prerequisite is missing is
skipped with the reason, unless PIZZACTL_REQUIRE_TIERS names it (CI sets it), in which
case the missing prerequisite is a failure, so a green CI run means the tier really ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pizza_not_pizza"


def require_tier(tier: str, reason: str) -> None:
    """Skip (or fail, if CI requires the tier) because a prerequisite is missing."""
    required = {t.strip() for t in os.environ.get("PIZZACTL_REQUIRE_TIERS", "").split(",") if t.strip()}
    if tier in required:
        pytest.fail(f"tier {tier!r} is required (PIZZACTL_REQUIRE_TIERS) but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real photos (../shared/data/pizza_not_pizza)."""
    if not (SHARED_DATA / "pizza").is_dir():
        pytest.skip(f"shared photos not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_photos(shared_data) -> dict[str, list[Path]]:
    """Sorted photo paths per class."""
    return {c: sorted((shared_data / c).glob("*.jpg")) for c in ("pizza", "not_pizza")}


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """Point every path pizzactl writes to into tmp_path, and run from there."""
    for name in ("models_dir", "runs_dir", "cache_dir", "state_dir"):
        monkeypatch.setenv("PIZZACTL_" + name.upper(), str(tmp_path / name.replace("_dir", "")))
    monkeypatch.chdir(tmp_path)
    return tmp_path
