"""Progress lines of long-running work (training), printed on the terminal by the tasks.

Light on purpose: the flow process formats the lines its training processes report
without importing torch.
"""

from __future__ import annotations

import math

__all__ = ["clock", "format_progress"]


def clock(seconds: float) -> str:
    """``h:mm:ss`` of a number of seconds (rounded)."""
    sec = int(round(max(seconds, 0.0)))
    return f"{sec // 3600}:{sec // 60 % 60:02d}:{sec % 60:02d}"


def format_progress(
    label: str, done: int, total: int, seconds: float, episode_return: float | None
) -> str:
    """One line: steps done of the total and the share, steps per second, elapsed time,
    the time left at the current rate, and the mean simple return of the training
    episodes that ended in the last rollout (``episode_return`` is their mean log return;
    left out when ``None``).

    >>> format_progress("train fold 0 seed 0", 20480, 50000, 32.0, 0.001)
    'train fold 0 seed 0: 20,480 / 50,000 steps (41%), 640 steps/s, elapsed 0:00:32, ETA 0:00:46, recent episode return +0.100%'
    """
    rate = done / seconds if seconds > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    recent = (
        ""
        if episode_return is None
        else f", recent episode return {math.expm1(episode_return):+.3%}"
    )
    return (
        f"{label}: {done:,} / {total:,} steps ({done / max(total, 1):.0%}), "
        f"{rate:,.0f} steps/s, elapsed {clock(seconds)}, ETA {clock(eta)}{recent}"
    )
