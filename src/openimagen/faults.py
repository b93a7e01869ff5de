"""Fault injection for reliability tests: die, run out of disk, or get a NaN at a named point.

Every write that must survive a crash (checkpoints, the embedding cache, sample grids, the published
model, the log) calls `point("<name>")` between its steps. Normally that is one dictionary lookup and
nothing happens. With the environment variable set, e.g.

    OPENIMAGEN_FAULT=checkpoint.file:3:kill      SIGKILL this process the 3rd time the point is reached
    OPENIMAGEN_FAULT=embeddings.shard:1:enospc   raise OSError(ENOSPC) there, as a full disk would
    OPENIMAGEN_FAULT=train.loss:5:nan            `value("train.loss", loss)` returns NaN at the 5th call
    OPENIMAGEN_FAULT=samples.grid:1:raise        raise FaultInjected (an in-process stand-in for a kill)

the fault fires once, at that hit (counted per process); several faults are separated by commas.
The soak benchmark (benchmarks/soak_kill.py) and tests/test_reliability_*.py use it to land kills
inside writes deterministically, which random-time kills hit only by luck.

Points: checkpoint.file (after each file of a checkpoint), checkpoint.rename (folder complete, not yet
in place), checkpoint.latest (in place, `latest` not yet rewritten), embeddings.shard (a shard written
under its temporary name), embeddings.index (shards in place, index.json not yet), samples.grid (the
grid written beside its final name), model.publish (the model folder written, not yet in place),
train.step (after an optimiser step), train.loss (the loss of a step, for `value`).
"""
from __future__ import annotations

import errno
import os
import signal

ENV = "OPENIMAGEN_FAULT"
ACTIONS = ("kill", "enospc", "nan", "inf", "raise")
_hits: dict[str, int] = {}


class FaultInjected(BaseException):
    """Raised by the `raise` action: like a kill, nothing should catch it (a BaseException)."""


def _faults() -> dict[str, tuple[int, str]]:
    spec = os.environ.get(ENV)
    if not spec:
        return {}
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition(":")
        nth, _, action = rest.partition(":")
        if not nth.isdigit() or action not in ACTIONS:
            raise ValueError(f"{ENV}={spec!r}: write POINT:N:ACTION with ACTION one of {list(ACTIONS)}, "
                             "e.g. checkpoint.file:3:kill")
        out[name] = (int(nth), action)
    return out


def _due(name: str) -> str | None:
    faults = _faults()
    if name not in faults:
        return None
    _hits[name] = _hits.get(name, 0) + 1
    nth, action = faults[name]
    return action if _hits[name] == nth else None


def point(name: str, where: str = "") -> None:
    """A named step inside a write: kill, fail with ENOSPC or raise here if the environment says so."""
    action = _due(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where or name)
    elif action == "raise":
        raise FaultInjected(name)


def value(name: str, x):
    """`x`, or NaN / inf times x when a `nan` / `inf` fault of this name is due (x: a float tensor)."""
    action = _due(name)
    if action == "nan":
        return x * float("nan")
    if action == "inf":
        return x * float("inf")
    return x


def reset() -> None:
    """Forget the hit counts (tests that set the variable again in one process)."""
    _hits.clear()
