"""Compiled feature kernels against brute-force references, hand-worked cases and prefixes."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio.features import kernels as K


def _windows(x: np.ndarray, window: int | None) -> list[np.ndarray]:
    """The non-missing values of each row's window (``None``: every row so far)."""
    out = []
    for t in range(len(x)):
        lo = 0 if window is None else max(0, t - window + 1)
        w = x[lo : t + 1]
        out.append(w[~np.isnan(w)])
    return out


def ref_std(x: np.ndarray, window: int, ddof: int) -> np.ndarray:
    return np.array([w.std(ddof=ddof) if len(w) == window else np.nan for w in _windows(x, window)])


def ref_z(
    x: np.ndarray, window: int | None, clip: float, min_count: int, fill: float
) -> np.ndarray:
    out = []
    for t, w in enumerate(_windows(x, window)):
        if np.isnan(x[t]) or len(w) < max(min_count, 2):
            out.append(fill)
            continue
        mean, var = w.mean(), w.var(ddof=1)
        if var <= K.FLAT_VARIANCE * (mean * mean + var):
            out.append(0.0)
        else:
            out.append(min(max((x[t] - mean) / math.sqrt(var), -clip), clip))
    return np.array(out)


def noisy(n: int, seed: int, nan_share: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 100.0 + np.cumsum(rng.standard_normal(n)) * 0.5
    if nan_share:
        x[rng.random(n) < nan_share] = np.nan
    return x


def test_zscore_hand_worked() -> None:
    # Windows of 3: [1, 2, 3] -> mean 2, sd 1 -> z 1; [2, 3, 4] likewise; [3, 4, 0]: mean
    # 7/3, sd sqrt(13/3) -> z = (0 - 7/3) / sqrt(13/3).
    z = K.zscores(np.array([1.0, 2.0, 3.0, 4.0, 0.0]), 3, None, float32=False)
    assert z[:2].tolist() == [0.0, 0.0]  # window not full: the fill value
    assert z[2] == pytest.approx(1.0) and z[3] == pytest.approx(1.0)
    assert z[4] == pytest.approx(-(7 / 3) / math.sqrt(13 / 3))
    assert K.zscores(np.array([1.0, 2.0, 3.0, 4.0, 0.0]), 3, 1.0)[4] == -1.0  # clipped
    flat = K.zscores(np.full(10, 7.25), 4, 10.0)
    assert flat.tolist() == [0.0] * 10  # flat windows score 0, not inf or nan


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize(("window", "nan_share"), [(2, 0.0), (7, 0.0), (50, 0.0), (20, 0.03)])
def test_rolling_std_matches_numpy_windows(window: int, nan_share: float, ddof: int) -> None:
    # 1,500 rows cross several exact recomputations (every RESYNC_WINDOWS windows).
    x = noisy(1500, seed=window, nan_share=nan_share)
    got = K.rolling_std(x, window, ddof)
    want = ref_std(x, window, ddof)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    # Levels near 100: a std of 1e-4 (two close prices) carries ~1e-12 of rounding.
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    if nan_share == 0.0:  # polars as a second oracle where there is nothing missing
        polars = pl.Series(x).rolling_std(window, min_samples=window, ddof=ddof).to_numpy()
        np.testing.assert_allclose(got, polars, rtol=1e-8, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize(
    ("window", "min_count", "nan_share"),
    [(30, 30, 0.0), (30, 30, 0.02), (30, 2, 0.3), (None, 2, 0.0), (None, 2, 0.2)],
)
def test_zscores_match_brute_force(window: int | None, min_count: int, nan_share: float) -> None:
    x = noisy(1200, seed=7, nan_share=nan_share)
    x[600] = 160.0  # a jump, so that clipping happens
    want = ref_z(x, window, 3.0, min_count, fill=-99.0)
    got = K.zscores(x, window, 3.0, min_count=min_count, fill=-99.0, float32=False)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert (np.abs(got[got != -99.0]) == 3.0).any()  # the clip was exercised
    got32 = K.zscores(x, window, 3.0, min_count=min_count, fill=-99.0)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_float32_input_is_scored_without_a_copy_to_float64_first() -> None:
    x32 = noisy(400, seed=3).astype(np.float32)
    np.testing.assert_array_equal(
        K.zscores(x32, 25, 10.0), K.zscores(x32.astype(np.float64), 25, 10.0)
    )


def test_exact_resync_clears_rounding_error_of_a_spike() -> None:
    # Values near 1 with sd 1e-3, and one value of 1e9: the sliding update's rounding
    # error after the spike leaves the window (~1e9^2 * 1e-16) dwarfs the true variance.
    # From the first exact recomputation after it has left, values are exact again.
    window = 40
    x = 1.0 + noisy(4000, seed=11) * 1e-5
    spike = 1000
    x[spike] = 1e9
    got = K.rolling_std(x, window)
    want = ref_std(x, window, 1)
    period = K.RESYNC_WINDOWS * window
    clean_from = ((spike + window) // period + 1) * period - 1  # first resync row after it left
    # (Levels near 1 with a std near 7e-6: the sliding update's own rounding is ~1e-9.)
    np.testing.assert_allclose(got[clean_from:], want[clean_from:], rtol=1e-7)
    assert np.abs(got[spike + window : clean_from] - want[spike + window : clean_from]).max() > 1e-3
    z = K.zscores(x, window, None, float32=False)
    np.testing.assert_allclose(
        z[clean_from:], ref_z(x, window, math.inf, window, 0.0)[clean_from:], rtol=1e-7, atol=1e-9
    )


def _py_wilder(x: list[float], n: int, first: int) -> list[float]:
    out = [math.nan] * len(x)
    if len(x) < first + n:
        return out
    avg = sum(x[first : first + n]) / n
    out[first + n - 1] = avg
    for t in range(first + n, len(x)):
        avg = (avg * (n - 1) + x[t]) / n
        out[t] = avg
    return out


def _py_rsi(c: list[float], n: int) -> list[float]:
    d = [math.nan] + [c[i] - c[i - 1] for i in range(1, len(c))]
    g = _py_wilder([max(v, 0.0) if i else math.nan for i, v in enumerate(d)], n, 1)
    lo = _py_wilder([max(-v, 0.0) if i else math.nan for i, v in enumerate(d)], n, 1)
    out = []
    for a, b in zip(g, lo, strict=True):
        if math.isnan(a):
            out.append(math.nan)
        elif b > 0:
            out.append(100.0 - 100.0 / (1.0 + a / b))
        else:
            out.append(100.0 if a > 0 else 50.0)
    return out


def test_wilder_and_rsi_match_textbook_loops() -> None:
    x = noisy(300, seed=5)
    np.testing.assert_allclose(K.wilder_values(x, 14, 0), _py_wilder(list(x), 14, 0), rtol=1e-12)
    np.testing.assert_allclose(K.wilder_values(x, 5, 3), _py_wilder(list(x), 5, 3), rtol=1e-12)
    np.testing.assert_allclose(K.rsi_values(x, 14), _py_rsi(list(x), 14), rtol=1e-12)
    # Hand-worked: n = 2, closes 1, 2, 4, 3: changes +1, +2, -1; seed gain 1.5, loss 0
    # -> 100; then gain (1.5 + 0) / 2 = 0.75, loss (0 + 1) / 2 = 0.5 -> 100 - 100 / 2.5 = 60.
    r = K.rsi_values(np.array([1.0, 2.0, 4.0, 3.0]), 2)
    assert np.isnan(r[:2]).all() and r[2] == 100.0 and r[3] == pytest.approx(60.0)
    assert (K.rsi_values(np.full(30, 5.0), 14)[14:] == 50.0).all()


def test_rsi_skips_a_missing_close() -> None:
    c = noisy(60, seed=9)
    gap = c.copy()
    gap[40] = np.nan
    got = K.rsi_values(gap, 14)
    assert np.isnan(got[40])
    np.testing.assert_allclose(got[:40], K.rsi_values(c, 14)[:40], rtol=0)
    # After the gap the next change is measured from the last known close (row 39).
    skipped = K.rsi_values(np.delete(c, 40), 14)
    np.testing.assert_allclose(got[41:], skipped[40:], rtol=1e-12)


def test_segment_cum_matches_a_python_loop() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(500)
    x[rng.random(500) < 0.1] = np.nan
    first = rng.random(500) < 0.05
    first[0] = True
    for op, f in (("sum", lambda a, b: a + b), ("max", max), ("min", min)):
        want, acc = [], math.nan
        for v, start in zip(x, first, strict=True):
            if start or math.isnan(acc):
                acc = v
            elif not math.isnan(v):
                acc = f(acc, v)
            want.append(acc)
        np.testing.assert_allclose(K.segment_cum(x, first, op), want, rtol=1e-12)
    # The polars window function as a second oracle where nothing is missing.
    y = rng.standard_normal(500)
    session = np.cumsum(first)
    frame = pl.DataFrame({"y": y, "s": session})
    oracle = frame.select(pl.col("y").cum_max().over("s"))["y"].to_numpy()
    np.testing.assert_array_equal(K.segment_cum(y, first, "max"), oracle)


def _kernels(x: np.ndarray, window: int) -> list[np.ndarray]:
    first = np.zeros(len(x), dtype=bool)
    first[:: max(window, 1)] = True
    return [
        K.zscores(x, window, 4.0),
        K.zscores(x, window, None, min_count=2, float32=False),
        K.zscores(x, None, 4.0),
        K.rolling_std(x, window),
        K.wilder_values(x, window, 1),
        K.rsi_values(x, window),
        K.segment_cum(x, first, "sum"),
        K.segment_cum(x, first, "min"),
    ]


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(-1e6, 1e6, allow_nan=False),
            st.just(math.nan),
            st.sampled_from([0.0, 1.0, 1.0, 1.0]),  # repeats: flat windows
        ),
        min_size=2,
        max_size=160,
    ),
    window=st.integers(2, 12),
    data=st.data(),
)
def test_prefix_gives_identical_values(values: list[float], window: int, data) -> None:  # type: ignore[no-untyped-def]
    x = np.array(values)
    k = data.draw(st.integers(1, len(x)))
    for whole, part in zip(_kernels(x, window), _kernels(x[:k], window), strict=True):
        np.testing.assert_array_equal(part, whole[:k])  # bit for bit, NaN where NaN


def test_bad_arguments_are_refused() -> None:
    x = np.arange(10.0)
    with pytest.raises(ValueError, match="window must be at least 2"):
        K.zscores(x, 1, None)
    with pytest.raises(ValueError, match="window must be at least 2"):
        K.rolling_std(x, 1, ddof=1)
    with pytest.raises(ValueError, match="op must be one of"):
        K.segment_cum(x, x > 5, "mean")
    with pytest.raises(ValueError, match="10 values but 9 flags"):
        K.segment_cum(x, x[:9] > 5, "sum")
    with pytest.raises(ValueError, match="need n >= 1"):
        K.rsi_values(x, 0)


def test_expressions_turn_undefined_rows_into_nulls() -> None:
    frame = pl.DataFrame({"x": noisy(50, seed=1)})
    out = frame.select(
        K.rolling_std_expr(pl.col("x"), 5).alias("sd"),
        K.zscore_expr(pl.col("x"), 5).alias("z"),
        K.rsi_expr(pl.col("x"), 14).alias("rsi"),
        K.wilder_expr(pl.col("x"), 3, 0).alias("w"),
    )
    assert out.null_count().row(0) == (4, 4, 14, 2)
    assert not out.select(pl.all().is_nan().any()).row(0)[0]
