"""The route trace: what each (token, layer, selected expert) got from the expert cache.

A trace is a JSON-lines file (`hobbit run --trace FILE` writes one). The first line may be a
header, every other line is one route:

    {"hobbit_trace": 1, "model": "m.gguf", "n_layer": 5, "n_expert": 8, "n_expert_used": 2}
    {"token": 0, "layer": 0, "expert": 3, "weight": 0.61, "outcome": "load_hi"}
    {"token": 0, "layer": 0, "expert": 6, "weight": 0.39, "outcome": "load_lo"}
    ...

- token: the position in the sequence (0 = the first prompt token); prefill and decode alike
- layer: the MoE layer index (the model's block index)
- expert: the routed expert's index in its layer
- weight: the route's share of its token's total gating weight (what the thresholds act on)
- outcome: one of OUTCOMES: a hit on a cached hi / lo copy, a load of a hi / lo copy, a
  skipped route, a hit on a copy that a prefetch loaded (hi / lo) before it was needed, or
  (GPU tier) a miss computed on the CPU from the host tier (hi / lo)
- phase (optional): "prefill" or "decode"
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hobbit_py._lib import HobbitError

FORMAT_VERSION = 1
OUTCOMES = ("hit_hi", "hit_lo", "load_hi", "load_lo", "skip", "prefetch_hi", "prefetch_lo", "cpu_hi", "cpu_lo")


@dataclass(frozen=True)
class RouteEvent:
    """One route of one token in one layer."""

    token: int
    layer: int
    expert: int
    weight: float
    outcome: str
    phase: str | None = None


@dataclass
class Trace:
    """A parsed trace: its header (possibly empty) and its routes in file order."""

    header: dict[str, Any]
    events: list[RouteEvent]

    @property
    def n_layer(self) -> int:
        return int(self.header.get("n_layer") or max((e.layer for e in self.events), default=-1) + 1)

    @property
    def n_expert(self) -> int:
        return int(self.header.get("n_expert") or max((e.expert for e in self.events), default=-1) + 1)

    @property
    def n_tokens(self) -> int:
        return max((e.token for e in self.events), default=-1) + 1


def _event(data: Any, where: str) -> RouteEvent:
    if not isinstance(data, dict):
        raise HobbitError(f"{where}: a route must be a JSON object")
    try:
        token, layer, expert = int(data["token"]), int(data["layer"]), int(data["expert"])
        weight, outcome = float(data["weight"]), str(data["outcome"])
    except KeyError as exc:
        raise HobbitError(f"{where}: route lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise HobbitError(f"{where}: token, layer, expert must be integers and weight a number") from None
    if min(token, layer, expert) < 0:
        raise HobbitError(f"{where}: token, layer and expert must be >= 0")
    if outcome not in OUTCOMES:
        raise HobbitError(f"{where}: unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
    return RouteEvent(token, layer, expert, weight, outcome, data.get("phase"))


def read_trace(path: Path) -> Trace:
    """Parse a trace file; a bad line is a one-line error naming the file and line."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise HobbitError(f"trace file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HobbitError(f"cannot read {path}: {exc}") from None
    header: dict[str, Any] = {}
    events: list[RouteEvent] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HobbitError(f"{where}: not JSON ({exc.msg})") from None
        if isinstance(data, dict) and "hobbit_trace" in data:
            if data["hobbit_trace"] != FORMAT_VERSION:
                raise HobbitError(f"{where}: trace format {data['hobbit_trace']}, this hobbit "
                                  f"reads {FORMAT_VERSION}")
            header = data
            continue
        events.append(_event(data, where))
    if not events:
        raise HobbitError(f"{path} has no routes")
    return Trace(header, events)


def from_engine(records: list[dict[str, Any]], n_prompt: int) -> list[RouteEvent]:
    """Route events as the engine records them (capi.trace_read: per ubatch, token within the
    ubatch) placed at their sequence positions. A ubatch's width is its widest layer; a layer
    that ran on fewer tokens (llama.cpp computes the last layer only for the tokens whose
    logits are read) ran on the ubatch's last ones."""
    by_ubatch: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_ubatch.setdefault(int(r["ubatch"]), []).append(r)
    events: list[RouteEvent] = []
    base = 0
    for ubatch in sorted(by_ubatch):
        group = by_ubatch[ubatch]
        width: dict[int, int] = {}
        for r in group:
            width[r["layer"]] = max(width.get(r["layer"], 0), int(r["token"]) + 1)
        n_tokens = max(width.values())
        for r in group:
            position = base + n_tokens - width[r["layer"]] + int(r["token"])
            outcome = str(r["outcome"])
            if r.get("prefetched") and outcome in ("hit_hi", "hit_lo"):
                outcome = "prefetch_" + outcome.removeprefix("hit_")
            events.append(RouteEvent(position, int(r["layer"]), int(r["expert"]), float(r["share"]),
                                     outcome, "prefill" if position < n_prompt else "decode"))
        base += n_tokens
    return events


def write_trace(path: Path, events: list[RouteEvent], header: dict[str, Any] | None = None) -> None:
    """Write a trace file (header first)."""
    with path.open("w") as f:
        f.write(json.dumps({"hobbit_trace": FORMAT_VERSION, **(header or {})}) + "\n")
        for e in events:
            record: dict[str, Any] = {"token": e.token, "layer": e.layer, "expert": e.expert,
                                      "weight": round(e.weight, 6), "outcome": e.outcome}
            if e.phase:
                record["phase"] = e.phase
            f.write(json.dumps(record) + "\n")
