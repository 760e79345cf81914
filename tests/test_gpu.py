"""The CUDA path of training: run only where a GPU is present (skipped elsewhere).

CI has no GPU; these tests are run on a GPU machine by hand (see ``benchmarks/README.md``
for the last run). They check what the CPU tests cannot: the full ``sentio_ppo`` agent
(quantile critic, regime gating, transformer) trains on CUDA with bf16 autocast actually
active in the extractor and float32 heads, a model trained on the GPU loads on the CPU
and picks the same actions, and a killed CUDA training resumes from its checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sentio.agents.training import algorithm_class, train_agent
from sentio.config import SentioConfig, resolve_for_bars, with_overrides
from sentio.env import EnvParams
from sentio.env.backtest import backtest
from tests.env_helpers import random_market

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

GPU = {
    "agent.algo": "sentio_ppo",
    "agent.n_steps": 64,
    "agent.batch_size": 128,
    "agent.n_epochs": 2,
    "train.n_envs": 8,
    "train.total_timesteps": 1024,
    "train.checkpoint_every": 512,
    "train.device": "cuda",
    "env.window": 8,
}


def gpu_cfg(**overrides: Any) -> SentioConfig:
    return with_overrides(SentioConfig(), {**GPU, **overrides})


@pytest.fixture(scope="module")
def market() -> Any:
    return random_market(n_sessions=6, session_len=120, seed=3, bar_vol=2e-3, n_regimes=3)


def test_sentio_ppo_trains_on_cuda_with_bf16_features_and_fp32_heads(
    market: Any, tmp_path: Path
) -> None:
    cfg = gpu_cfg()
    dtypes: dict[str, set[torch.dtype]] = {"features": set(), "quantiles": set()}
    original = torch.nn.Module.__call__

    result = train_agent(cfg, market, [(0, market.n_rows)], seed=0, out_dir=tmp_path)
    assert result.device.startswith("cuda")
    model: Any = algorithm_class(cfg).load(result.model_path, device="cuda")
    policy: Any = model.policy
    assert next(policy.parameters()).is_cuda

    extractor_linears = {
        m for m in policy.features_extractor.modules() if isinstance(m, torch.nn.Linear)
    }
    assert extractor_linears

    def spy(mod: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        out = original(mod, *args, **kwargs)
        if isinstance(mod, torch.nn.Linear) and mod in extractor_linears:
            dtypes["features"].add(out.dtype)
        return out

    obs, _ = policy.obs_to_tensor(
        {k: np.asarray(v)[None].repeat(4, 0) for k, v in _one_obs(market, cfg).items()}
    )
    torch.nn.Module.__call__ = spy  # type: ignore[method-assign]
    try:
        with torch.no_grad(), model._autocast():
            dist = policy.get_distribution(obs)
            q = policy.predict_quantiles(obs) if hasattr(policy, "predict_quantiles") else None
    finally:
        torch.nn.Module.__call__ = original  # type: ignore[method-assign]
    assert torch.bfloat16 in dtypes["features"], dtypes
    assert dist.distribution.logits.dtype == torch.float32
    if q is not None:
        assert q.dtype == torch.float32
        assert torch.isfinite(q).all()
    for p in policy.parameters():
        assert torch.isfinite(p).all()


def _one_obs(market: Any, cfg: SentioConfig) -> dict[str, np.ndarray]:
    from sentio.env.simulator import BatchSimulator

    params = EnvParams.from_config(resolve_for_bars(cfg, 60))
    sim = BatchSimulator(market, params, 1, backtest=True)
    start = params.window - 1
    sim.reset(np.zeros(1, dtype=np.int64), np.array([start]), np.array([market.n_rows - 1]))
    return {k: v[0] for k, v in sim.observe().items()}


def test_cuda_model_loads_on_cpu_and_acts_alike(market: Any, tmp_path: Path) -> None:
    cfg = gpu_cfg()
    result = train_agent(cfg, market, [(0, market.n_rows)], seed=1, out_dir=tmp_path)
    # bf16 on the GPU vs float32 on the CPU: near-ties may break differently, little else
    assert _gpu_cpu_agreement(cfg, market, result.model_path) >= 0.9


def _gpu_cpu_agreement(cfg: SentioConfig, market: Any, model_path: str) -> float:
    """Share of the second half's bars where the model loaded on the GPU and on the CPU
    take the same deterministic action."""
    params = EnvParams.from_config(resolve_for_bars(cfg, 60))
    rows = [(market.n_rows // 2, market.n_rows)]
    on_gpu = backtest(algorithm_class(cfg).load(model_path, device="cuda"), market, params, rows)
    on_cpu = backtest(algorithm_class(cfg).load(model_path, device="cpu"), market, params, rows)
    agree = float(np.mean(on_gpu.actions == on_cpu.actions))
    print(f"\nGPU vs CPU deterministic actions agree on {agree:.3f} of {on_cpu.n_bars} bars")
    return agree


def test_cuda_training_resumes_from_its_checkpoint(market: Any, tmp_path: Path) -> None:
    cfg = gpu_cfg()
    first = train_agent(cfg, market, [(0, market.n_rows)], seed=2, out_dir=tmp_path)
    assert first.resumed_from == 0
    # a run killed after its last checkpoint: the final model is gone, the checkpoint (SB3
    # zip with the optimiser, step count and RNG state, written from CUDA tensors) is not;
    # the same training again must resume from it on the GPU, not start over
    Path(first.model_path).unlink()
    again = train_agent(cfg, market, [(0, market.n_rows)], seed=2, out_dir=tmp_path)
    assert again.resumed_from >= cfg.train.checkpoint_every
    assert again.num_timesteps == first.num_timesteps
    assert again.device.startswith("cuda")


# ---------------------------------------------------------------------------- device path


def test_torch_simulator_on_cuda_equals_numpy() -> None:
    """The equivalence of ``tests/test_torch_simulator.py`` with the accounts on the GPU
    (float64 there too: bit for bit but the reward's logarithm)."""
    from tests.test_torch_simulator import _params, _run

    rng = np.random.default_rng(0)
    market = random_market(n_sessions=4, session_len=60, seed=9, bar_vol=3e-3)
    for backtest_mode in (False, True):
        for masks in (None, True):
            _run(
                market,
                _params(rng, all_masks=masks),
                1024,
                backtest_mode,
                seed=1,
                steps=120,
                device="cuda",
            )


def test_auto_rollout_shape_on_cuda_and_a_device_training(market: Any, tmp_path: Path) -> None:
    """``auto`` gives 4,096 accounts x 16 steps on the GPU; the device path trains there
    (no host round trip per step) and the model acts alike on the CPU."""
    from sentio.agents.training import GPU_ROLLOUT, rollout_shape

    auto = {"train.n_envs": "auto", "agent.n_steps": "auto", "agent.batch_size": "auto"}
    cfg = gpu_cfg(**auto, **{"train.total_timesteps": 2 * 4096 * 16})
    assert rollout_shape(cfg, torch.device("cuda")) == GPU_ROLLOUT
    result = train_agent(cfg, market, [(0, market.n_rows)], seed=4, out_dir=tmp_path)
    assert (result.rollout, result.n_envs, result.n_steps) == ("device", 4096, 16)
    assert result.num_timesteps == 2 * 4096 * 16
    assert _gpu_cpu_agreement(cfg, market, result.model_path) >= 0.9


def test_batched_inference_on_cuda_equals_predict() -> None:
    """The backtest's window-batched inference (the transformer encoded 512 rows at a time
    on the GPU) takes the actions ``predict`` takes on the same CUDA model."""
    import sentio.env.decisions as decisions
    from tests.test_inference import _model

    model, market, params = _model("sentio_ppo", n_sessions=10)  # scrambled weights
    model.policy.to(torch.device("cuda"))
    assert next(model.policy.parameters()).is_cuda
    rows = [(0, market.n_rows)]
    batched = backtest(model, market, params, rows)
    original = decisions.window_batched_actions, decisions._direct_actions
    try:
        decisions.window_batched_actions = lambda *a: None  # type: ignore[assignment]
        decisions._direct_actions = lambda model: None  # type: ignore[assignment]
        predicted = backtest(model, market, params, rows)
    finally:
        decisions.window_batched_actions, decisions._direct_actions = original
    np.testing.assert_array_equal(batched.actions, predicted.actions)
    assert np.unique(batched.actions).size >= 3
