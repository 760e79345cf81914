"""The report stage: the run's report from its trainings' summaries, with the run's profile.

Not cached (every run's report holds that run's performance profile), so it has no key:
an edit here changes no other stage's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sentio.config import SentioConfig, resolve_for_bars


def run_profile(timings: dict[str, float], runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The performance profile of a run: seconds per stage, training throughput, memory.

    Peak memory is the flow process's peak resident set (the tasks run in its threads)
    and, beside it, the largest peak of a finished child process (each training runs in
    one); GPU memory is torch's peak allocation when CUDA was used in this process.
    """
    import resource

    profile: dict[str, Any] = {f"{k} (s)": round(v, 2) for k, v in timings.items()}
    rates = [r["train"]["steps_per_second"] for r in runs if r.get("train")]
    if rates:
        profile["training steps per second (mean over runs)"] = round(float(np.mean(rates)), 1)
        profile["training steps (total)"] = int(sum(r["train"]["num_timesteps"] for r in runs))
        profile["devices"] = ", ".join(sorted({str(r["train"]["device"]) for r in runs}))
    profile["peak memory (MiB)"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if child > 0:
        profile["peak memory of a training process (MiB)"] = round(child / 1024, 1)
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
            profile["peak GPU memory (MiB)"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return profile


def report_stage(
    runs: Sequence[dict[str, Any]],
    cfg: SentioConfig,
    out_dir: str | Path,
    *,
    ingest_summary: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the run's report (``report.md``, ``report.html``, ``metrics.json``) to ``out_dir``.

    ``run_info`` (``name``, ``started``, ``config_hash``) heads the report. Not cached: the
    report of every run includes that run's performance profile.
    """
    from sentio.report import build_report

    if ingest_summary is not None and ingest_summary.get("bar_seconds"):
        cfg = resolve_for_bars(cfg, int(ingest_summary["bar_seconds"]))
    summary = build_report(
        list(runs),
        out_dir,
        cfg=cfg,
        ingest_summary=ingest_summary,
        profile=profile,
        run_info=run_info,
    )
    summary["output"] = summary["paths"]["html"]
    return summary
