"""Admission for the live streams: how many frames a second the workers can answer, and who gets how many.

Plain Python, no Flask: `allocate` shares a capacity among streams in the order they
connected, `Capacity` measures that capacity from the frames the workers answer, and
`Connection` holds one stream's rate and its token bucket. webapp.events wires them in.

Capacity is measured, not configured (unless FACES_LIVE_CAPACITY_FPS is set), because
what a machine answers depends on the model, the frames and whatever else runs on it:
workers x LOAD_TARGET / the mean time a frame took over the last COST_WINDOW_S (the
slowest COST_TRIM left out: new faces, detected and embedded at once; and the frames of a
stream's first NEW_STREAM_S, when it looks for faces all over). A frame's time is
its worker's wall time, so it grows when the workers wait for each other on Python's GIL
(dlib's network and landmarks hold it) or for cores other programs use.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass, field

# The workers are planned to be busy this share of the time (the sockets' own threads need the rest).
LOAD_TARGET = 0.85
# Seconds a frame is taken to cost until COST_MIN_SAMPLES were timed; frames of the last COST_WINDOW_S count,
# the slowest COST_TRIM of them left out.
PRIOR_COST_S = 0.012
COST_MIN_SAMPLES = 20
COST_WINDOW_S = 4.0
COST_TRIM = 0.1
# A stream's first frames (its first closer look taken whole, its new faces embedded at once) are a one-off:
# frames of its first NEW_STREAM_S do not count toward the capacity, or streams starting together would
# read as a full server and slow each other down.
NEW_STREAM_S = 2.0
# Rates are worked out again this often (seconds), and sent when they change by at least RATE_STEP (a share).
RATE_EVERY_S = 2.0
RATE_STEP = 0.1
# A worker takes a connection's frames at most PACE_MARGIN times its rate, in bursts of up to PACE_BURST
# frames (a token bucket): a client keeping to its rate never waits, one sending more gets no more.
PACE_MARGIN = 1.25
PACE_BURST = 2.0


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def allocate(wants: list[float], capacity: float, min_fps: float, admitted: list[bool] | None = None) -> list[float]:
    """Frame rates for streams in the order they connected.

    Each stream's floor is min_fps (or what it wants, when that is less). A stream already
    let in (admitted[i]) always keeps its floor; a new one is let in, oldest first, while
    its floor fits beside the floors of those already in; the first that does not fit gets 0
    (it waits), and so does every newer one.
    Of those in, each gets what it wants as long as every later one keeps its floor.
    wants, capacity and the result are frames a second.
    """
    admitted = list(admitted) if admitted is not None else [False] * len(wants)
    floors = [min(want, min_fps) for want in wants]
    used = sum(floor for floor, inside in zip(floors, admitted) if inside)
    for i, floor in enumerate(floors):
        if admitted[i]:
            continue
        if used + floor > capacity + 1e-9:
            break  # it waits, and so do the newer ones: nobody jumps the queue
        admitted[i], used = True, used + floor
    rates, left = [], capacity
    for i, want in enumerate(wants):
        if not admitted[i]:
            rates.append(0.0)
            continue
        later = sum(floors[j] for j in range(i + 1, len(wants)) if admitted[j])
        rate = max(floors[i], min(want, left - later))
        rates.append(rate)
        left -= rate
    return rates


class Capacity:
    """Frames a second the workers can answer, from the time frames took lately (see the module docstring).

    :param workers: worker threads.
    :param fixed_fps: when > 0, the capacity, not measured.
    """

    def __init__(self, workers: int, fixed_fps: float = 0.0):
        self.workers = workers
        self.fixed_fps = fixed_fps
        self._costs: deque[tuple[float, float]] = deque()  # (when, seconds) of the frames answered lately
        self._cost = PRIOR_COST_S

    def answered(self, cost_s: float, now: float | None = None) -> None:
        """One frame answered, in cost_s seconds of its worker's time. Any thread."""
        self._costs.append((time.monotonic() if now is None else now, cost_s))

    def step(self, now: float | None = None) -> float:
        """The capacity now (frames a second), from the frames of the last COST_WINDOW_S."""
        if self.fixed_fps > 0:
            return self.fixed_fps
        now = time.monotonic() if now is None else now
        while self._costs and self._costs[0][0] < now - COST_WINDOW_S:
            self._costs.popleft()
        costs = sorted(cost for _, cost in list(self._costs))
        if len(costs) >= COST_MIN_SAMPLES:  # else the last estimate stands
            kept = costs[: max(1, int(len(costs) * (1 - COST_TRIM)))]
            self._cost = sum(kept) / len(kept)
        return self.workers * LOAD_TARGET / max(self._cost, 1e-4)


@dataclass
class Connection:
    """One live connection: its worker, the rate it asked for and the rate it is given."""

    sid: str
    worker: int
    want: float
    fps: float
    reason: str | None = None
    sent: tuple[float, str | None] | None = None  # the last `rate` event it got
    tokens: float = PACE_BURST  # frames it may have taken now (see PACE_MARGIN)
    filled: float = 0.0  # when tokens was last topped up (time.monotonic())
    opened: float = field(default_factory=time.monotonic)

    def counts_toward_capacity(self, now: float) -> bool:
        """Whether its frames' cost tells the capacity (not in its first NEW_STREAM_S)."""
        return now - self.opened >= NEW_STREAM_S

    def wait_s(self, now: float) -> float:
        """Seconds until its next frame may be taken (0: now), the bucket topped up first."""
        if self.fps <= 0:
            return math.inf
        rate = PACE_MARGIN * self.fps
        self.tokens = min(PACE_BURST, self.tokens + (now - self.filled) * rate)
        self.filled = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / rate

    def reason_for(self, fps: float, streams: int) -> str | None:
        """What the page says about this rate: nothing, "server busy: N streams" or "server full: N streams"."""
        if fps <= 0:
            return f"server full: {streams} streams"
        return f"server busy: {streams} streams" if fps < self.want - 0.5 else None

    def needs_event(self, fps: float, reason: str | None) -> bool:
        """Whether a `rate` event must tell it (first rate, another reason, or a change past RATE_STEP)."""
        last = self.sent
        return last is None or last[1] != reason or abs(fps - last[0]) > RATE_STEP * max(1.0, last[0])
