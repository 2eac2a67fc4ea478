"""Test tiers (markers slow, docker, browser, torch; `data`, the shared photos; `kserve`, KServe's
clients in .venv-kserve, made by `bash .ci/kserve-venv`).

A tier whose prerequisite is missing is skipped with the reason, unless PIZZACTL_REQUIRE_TIERS
names it (CI sets it), in which case the missing prerequisite is a failure, so a green CI run
means the tier really ran.
"""

from __future__ import annotations

import importlib
import os

import pytest


def require_tier(tier: str, reason: str) -> None:
    """Skip (or fail, if CI requires the tier) because a prerequisite is missing."""
    required = {t.strip() for t in os.environ.get("PIZZACTL_REQUIRE_TIERS", "").split(",") if t.strip()}
    if tier in required:
        pytest.fail(f"tier {tier!r} is required (PIZZACTL_REQUIRE_TIERS) but: {reason}")
    pytest.skip(reason)


def import_tier(module: str, tier: str):
    """Import an optional module a tier needs; missing, the tier is skipped (or fails under CI)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        require_tier(tier, f"{module} is not importable ({exc}); pip install -e '.[dev]'")
