"""The gateway's side of a rollout: which version answers a user, and the comparison done behind their back.

Modes (issue 23, docs/serve.md): off (the latest version answers), canary (`canary.py`: a share
of calls to the candidate, stable when it fails) and shadow (stable answers every call; the
candidate gets the same wire JPEGs in a background task). In canary mode stable is asked again
in the background for the calls the candidate answered, so both modes give a comparison on the
same inputs. A background call is never awaited by the request, is bounded (`max_in_flight`;
none while the gateway's queue is more than half full: skipped and counted), gets the user
call's patience and no more, and its failures only count and log (once a minute at most).
What it finds goes to `rollout_stats.py` (numbers, /metrics, /rollout) and, when the labels
differ, to `Disagreements` on disk.

The plan (share, shadow, routes) can change while the gateway runs: `PlanFile` re-reads
`rollout_plan_file` when it changes (written by atomic rename, as a new model version appears)
and `Rollout.apply` takes it; the counts start again, as they would after a restart. A plan that
cannot be used is logged and the one in use stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from pizzactl.config import trial_mode
from pizzactl.errors import ConfigError, PizzaError
from pizzactl.serving.admission import Admission
from pizzactl.serving.canary import CanarySplit, Routes
from pizzactl.serving.client import ModelClient, Prediction
from pizzactl.serving.rollout_stats import Disagreements, RolloutStats

log = logging.getLogger("pizzactl.gateway")
COMPLAIN_EVERY = 60.0  # seconds between log lines about failing comparison calls


def _prediction_json(p: Prediction) -> dict[str, Any]:
    return {"label": p.label, "probability": p.probability, "probabilities": p.probabilities}


class Rollout:
    """Routes, per-version bookkeeping and the background comparison, for one gateway."""

    def __init__(
        self,
        split: CanarySplit,
        model: ModelClient,
        admission: Admission,
        *,
        shadow: bool,
        directory: Path,
        keep: int,
        max_in_flight: int,
        registry: Any = None,
    ):
        self.split = split
        self.model = model
        self.admission = admission
        self.shadow = shadow
        self.mode = trial_mode(split.percent, shadow)
        self.stats = RolloutStats(registry)
        self.disagreements = Disagreements(directory, keep)
        self.max_in_flight = max_in_flight
        self._background: set[asyncio.Task[None]] = set()
        self._route_versions: dict[str | None, str] = {}  # the version each route last answered with
        self._last_complaint = -math.inf
        self.plan: str | None = None  # the id of the plan file's plan in use (None: the settings')

    def apply(self, split: CanarySplit, shadow: bool, plan: str | None) -> None:
        """A new plan, between two requests (one event loop: no request sees half of it); counts start again."""
        self.mode = trial_mode(split.percent, shadow)
        self.split, self.shadow, self.plan = split, shadow, plan
        self.stats = self.stats.fresh()
        self._route_versions = {}

    def routes(self) -> Routes:
        """Where the next user call goes."""
        return Routes(self.split.stable) if self.shadow else self.split.pick()

    def version_key(self, route: str | None, version: str | None = None, latest: str = "?") -> str:
        """The version a call went to: the one it answered with, else the one its route last answered with
        (a route never answered yet: its label; no route: the latest version)."""
        if version is not None:
            self._route_versions[route] = str(version)
            return str(version)
        return self._route_versions.get(route) or (route.rsplit("/", 1)[-1] if route else latest)

    async def call(
        self, jpegs: list[bytes], waits: tuple[float, float], route: str | None, role: str, latest: str
    ) -> tuple[list[Prediction], str | None]:
        """One model-server call (`ModelClient.predict`), counted for its version and role."""
        started = time.perf_counter()
        try:
            predictions, version = await self.model.predict(jpegs, *waits, route=route)
        except PizzaError:
            self.stats.call(self.version_key(route, latest=latest), role, time.perf_counter() - started)
            raise
        key = self.version_key(route, version or (None if route else latest))
        self.stats.call(key, role, time.perf_counter() - started, predictions)
        return predictions, version

    def compare_later(
        self, routes: Routes, jpegs: list[bytes], answered: list[Prediction], waits: tuple[float, float]
    ) -> None:
        """After a user call answered by `routes.first`: ask the other version in the background, if any."""
        if self.shadow:
            other, role = self.split.candidate, "candidate"
        elif routes.role == "candidate":  # the canary's answer: stable's too, for the comparison
            other, role = self.split.stable, "stable"
        else:
            return
        if len(self._background) >= self.max_in_flight:
            self.stats.skip("in_flight")
            return
        if self.admission.held > self.admission.bound() / 2:
            self.stats.skip("queue")
            return
        task = asyncio.get_running_loop().create_task(self._compare(jpegs, answered, waits, other, role))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _compare(
        self, jpegs: list[bytes], answered: list[Prediction], waits: tuple[float, float], route: str, role: str
    ) -> None:
        """The other version's answers; compared; disagreements kept. Nothing here reaches a user."""
        patience = self.model.timeout + sum(waits)
        try:
            # the user call's patience, no more: a slow candidate holds a place of the bound, not the gateway
            async with asyncio.timeout(patience):
                predictions, _ = await self.call(jpegs, waits, route, role, "?")
        except TimeoutError:
            self.stats.call(self.version_key(route), role, patience)
            self.complain(route, "timed out")
            return
        except PizzaError as exc:  # counted by `call`
            self.complain(route, exc.code)
            return
        except Exception as exc:  # a bug must not end the task unseen
            log.exception("comparison call to %s failed", route)
            self.stats.call(self.version_key(route), role, 0.0)
            self.complain(route, type(exc).__name__)
            return
        stable, candidate = (answered, predictions) if role == "candidate" else (predictions, answered)
        differ = self.stats.compare(stable, candidate)
        if not differ or self.disagreements.keep <= 0:
            return
        versions = {"stable": self.version_key(self.split.stable), "candidate": self.version_key(self.split.candidate)}
        for i in differ:
            record = {
                "mode": self.mode,
                **{
                    side: {"version": versions[side], **_prediction_json(answers[i])}
                    for side, answers in (("stable", stable), ("candidate", candidate))
                },
            }
            await asyncio.to_thread(self.disagreements.write, jpegs[i], record)  # not the requests' threadpool

    def complain(self, route: str, what: str) -> None:
        """A log line for a failing comparison call: at most one a minute (they are counted in /rollout)."""
        now = time.monotonic()
        if now - self._last_complaint >= COMPLAIN_EVERY:
            self._last_complaint = now
            log.warning("comparison call to %s failed (%s); users are not affected (counted in /rollout)", route, what)

    def as_json(self) -> dict[str, Any]:
        """GET /rollout: the split, per-version stats and the comparison, since the gateway started."""
        mode = self.mode

        def side(route: str | None) -> dict[str, Any]:
            key = self._route_versions.get(route)
            return {"route": route, "version": int(key) if key and key.isdigit() else None}

        skipped = self.stats.skipped_json()
        return {
            "schema": 1,
            "plan": self.plan,
            "mode": mode,
            "percent": self.split.percent if mode == "canary" else 0.0,
            "stable": side(self.split.stable if mode != "off" else None),
            "candidate": side(self.split.candidate),
            "versions": self.stats.versions_json(),
            "comparison": {
                **self.stats.comparison(),
                "kept": self.disagreements.on_disk,
                "kept_dir": str(self.disagreements.directory),
                "disagreements": self.disagreements.total,
                "kept_failed": self.disagreements.failed,
            },
            "shadow_skipped": sum(skipped.values()),
            "shadow_skipped_by_reason": skipped,
            "fallbacks": self.stats.fallbacks,
        }

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


class PlanFile:
    """`rollout_plan_file`: JSON `{"plan": id, "canary_percent", "shadow", "canary_version",
    "stable_version"}` (the settings of the same names), applied to a `Rollout` when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int] | None = None

    def read(self) -> tuple[CanarySplit, bool, str | None]:
        """The plan in the file; ConfigError (with what is wrong) when it cannot be used."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"Cannot read the rollout plan {self.path}: {exc}.", hint="Write it as JSON.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"The rollout plan {self.path} is not a JSON object.", hint="Write it as JSON.")
        try:
            percent, shadow = float(data.get("canary_percent") or 0), data.get("shadow", False)
            if not isinstance(shadow, bool):
                raise ValueError(f"shadow is {shadow!r}, not true or false")
            split = CanarySplit(
                percent, str(data.get("canary_version", "canary")), str(data.get("stable_version", "stable"))
            )
            trial_mode(split.percent, shadow)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"The rollout plan {self.path} cannot be used: {exc}.", hint="Fix the file.") from None
        plan = data.get("plan")
        return split, shadow, None if plan is None else str(plan)

    def check(self, rollout: Rollout) -> bool:
        """Apply the file if it changed since the last look; True when a new plan was taken."""
        try:
            st = self.path.stat()
        except OSError:
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            split, shadow, plan = self.read()
        except PizzaError as exc:
            log.error("kept the rollout plan in use (%s): %s %s", rollout.mode, exc.message, exc.hint)
            return False
        rollout.apply(split, shadow, plan)
        log.info(
            "rollout plan %s from %s: %s, candidate %s, stable %s",
            plan,
            self.path,
            rollout.mode,
            split.candidate,
            split.stable,
        )
        return True

    async def watch(self, rollout: Rollout, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                self.check(rollout)
            except Exception:  # a bug must not end the watch unseen
                log.exception("rollout plan check failed")
