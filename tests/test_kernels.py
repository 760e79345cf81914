"""Compiled feature kernels against brute-force references, hand-worked cases and prefixes."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio.features import kernels as K
from tests.textbook import ema, wilder


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
    return [math.nan if v is None else v for v in wilder(x, n, first)]


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


def test_rsi_and_atr_match_textbook_loops() -> None:
    x = noisy(300, seed=5)
    np.testing.assert_allclose(K.rsi_values(x, 14), _py_rsi(list(x), 14), rtol=1e-12)
    # Hand-worked: n = 2, closes 1, 2, 4, 3: changes +1, +2, -1; seed gain 1.5, loss 0
    # -> 100; then gain (1.5 + 0) / 2 = 0.75, loss (0 + 1) / 2 = 0.5 -> 100 - 100 / 2.5 = 60.
    r = K.rsi_values(np.array([1.0, 2.0, 4.0, 3.0]), 2)
    assert np.isnan(r[:2]).all() and r[2] == 100.0 and r[3] == pytest.approx(60.0)
    assert (K.rsi_values(np.full(30, 5.0), 14)[14:] == 50.0).all()
    high, low = x + 0.3 + noisy(300, seed=6) * 0.001, x - 0.4
    tr = [high[0] - low[0]] + [
        max(high[t] - low[t], abs(high[t] - x[t - 1]), abs(low[t] - x[t - 1]))
        for t in range(1, 300)
    ]
    want = np.array(_py_wilder(tr, 10, 0)) / x
    np.testing.assert_allclose(K.atr_rel(high, low, x, 10), want, rtol=1e-12)
    # Hand-worked: n = 2, bars (H, L, C) = (3, 1, 2), (4, 2, 3), (9, 5, 6): true ranges
    # 2, max(2, 2, 0) = 2, max(4, 6, 2) = 6; ATR 2 on row 1, (2 + 6) / 2 = 4 on row 2.
    atr = K.atr_rel(
        np.array([3.0, 4.0, 9.0]), np.array([1.0, 2.0, 5.0]), np.array([2.0, 3.0, 6.0]), 2
    )
    assert np.isnan(atr[0]) and atr[1] == pytest.approx(2 / 3) and atr[2] == pytest.approx(4 / 6)


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


def _bars(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    close = noisy(n, seed)
    open_ = close * np.exp(rng.normal(0, 0.001, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.002, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.002, n)))
    volume = rng.integers(0, 500, n).astype(float)
    return open_, high, low, close, volume


def test_returns_and_realized_vol_match_loops() -> None:
    c = noisy(300, seed=13)
    got = K.returns(c, [1, 5], [10])
    log_c = np.log(c)
    for k, h in enumerate((1, 5)):
        assert np.isnan(got[k, :h]).all()
        np.testing.assert_allclose(got[k, h:], log_c[h:] - log_c[:-h], rtol=1e-12)
    r1 = np.diff(log_c)
    rv = [r1[t - 10 : t].std(ddof=1) for t in range(10, 300)]  # returns of rows t-9 .. t
    assert np.isnan(got[2, :10]).all()
    np.testing.assert_allclose(got[2, 10:], rv, rtol=1e-9)
    assert K.returns(c, [], [3]).shape == (1, 300) and K.returns(c, [2], []).shape == (1, 300)


def test_range_vol_macd_bollinger_match_loops() -> None:
    o, h, lo, c, _ = _bars(400, seed=4)
    got = K.range_vol(o, h, lo, c, [5, 30])
    hl2 = np.log(h / lo) ** 2
    gk = 0.5 * hl2 - (2 * math.log(2) - 1) * np.log(c / o) ** 2
    for k, w in enumerate((5, 30)):
        park = [
            math.sqrt(hl2[t - w + 1 : t + 1].mean() / (4 * math.log(2))) for t in range(w - 1, 400)
        ]
        garman = [math.sqrt(max(gk[t - w + 1 : t + 1].mean(), 0.0)) for t in range(w - 1, 400)]
        assert np.isnan(got[2 * k, : w - 1]).all() and np.isnan(got[2 * k + 1, : w - 1]).all()
        np.testing.assert_allclose(got[2 * k, w - 1 :], park, rtol=1e-9)
        np.testing.assert_allclose(got[2 * k + 1, w - 1 :], garman, rtol=1e-9, atol=1e-12)

    # MACD: EMAs seeded with the first value, alpha = 2 / (span + 1).
    line = np.array(ema(list(c), 12)) - np.array(ema(list(c), 26))
    sig = np.array(ema(list(line), 9))
    np.testing.assert_allclose(
        K.macd(c, 12, 26, 9), [line / c, sig / c, (line - sig) / c], rtol=1e-9, atol=1e-15
    )
    # Bollinger (ddof 0): %b and width from each window's mean and std.
    bb = K.bollinger(c, 20, 2.0)
    for t in (19, 200, 399):
        win = c[t - 19 : t + 1]
        mid, sd = win.mean(), win.std()
        assert bb[0, t] == pytest.approx((c[t] - (mid - 2 * sd)) / (4 * sd), rel=1e-9)
        assert bb[1, t] == pytest.approx(4 * sd / mid, rel=1e-9)
    assert np.isnan(bb[:, :19]).all()
    flat = K.bollinger(np.full(30, 4.2), 10, 2.0)
    assert (flat[0, 9:] == 0.5).all() and (flat[1, 9:] == 0.0).all()


def test_session_features_match_a_python_loop() -> None:
    _, h, lo, c, v = _bars(500, seed=2)
    v[:3] = 0.0  # a session opening without volume: VWAP distance 0
    first = np.zeros(500, dtype=bool)
    first[[0, 120, 121, 390]] = True  # a one-bar session too
    want = []
    for t in range(500):
        if first[t]:
            pv = vol = 0.0
            top, bottom = h[t], lo[t]
        pv += (h[t] + lo[t] + c[t]) / 3 * v[t]
        vol += v[t]
        top, bottom = max(top, h[t]), min(bottom, lo[t])
        want.append(
            [
                math.log(c[t] / (pv / vol)) if vol > 0 else 0.0,
                math.log(c[t] / top),
                math.log(c[t] / bottom),
            ]
        )
    got = K.session_features(h, lo, c, v, first)
    np.testing.assert_allclose(got.T, want, rtol=1e-9, atol=1e-15)
    assert got[0, 0] == 0.0 and (got[1] <= 0).all() and (got[2] >= 0).all()
    # The polars window function as a second oracle for the session high.
    frame = pl.DataFrame({"h": h, "s": np.cumsum(first)})
    top = frame.select(pl.col("h").cum_max().over("s"))["h"].to_numpy()
    np.testing.assert_allclose(got[1], np.log(c / top), rtol=1e-12, atol=1e-15)


def test_float32_outputs_round_the_float64_values() -> None:
    o, h, lo, c, v = _bars(300, seed=8)
    first = np.zeros(300, dtype=bool)
    first[::100] = True
    pairs = [
        (K.rolling_std(c, 7), K.rolling_std(c, 7, float32=True)),
        (K.returns(c, [1, 4], [6]), K.returns(c, [1, 4], [6], float32=True)),
        (K.rsi_values(c, 14), K.rsi_values(c, 14, float32=True)),
        (K.atr_rel(h, lo, c, 14), K.atr_rel(h, lo, c, 14, float32=True)),
        (K.range_vol(o, h, lo, c, [9]), K.range_vol(o, h, lo, c, [9], float32=True)),
        (K.macd(c, 12, 26, 9), K.macd(c, 12, 26, 9, float32=True)),
        (K.bollinger(c, 20, 2.0), K.bollinger(c, 20, 2.0, float32=True)),
        (
            K.session_features(h, lo, c, v, first),
            K.session_features(h, lo, c, v, first, float32=True),
        ),
    ]
    for f64, f32 in pairs:
        assert f32.dtype == np.float32
        np.testing.assert_array_equal(f32, f64.astype(np.float32))


def test_dense_and_general_z_paths_agree_bit_for_bit() -> None:
    # Without missing values and with full windows required the z-scores take a faster
    # path; a NaN at the very end sends the whole column down the general one.
    x = noisy(5000, seed=12)
    x[2500:2600] = x[2500]  # a flat stretch
    both = np.append(x, np.nan)
    for window in (2, 37, 300):
        fast = K.zscores(x, window, 3.0)
        general = K.zscores(both, window, 3.0)[:-1]
        np.testing.assert_array_equal(fast, general)


def _kernels(x: np.ndarray, window: int) -> list[np.ndarray]:
    first = np.zeros(len(x), dtype=bool)
    first[:: max(window, 1)] = True
    pos = np.abs(x) + 1.0
    return [
        K.zscores(x, window, 4.0),
        K.zscores(x, window, None, min_count=2, float32=False),
        K.zscores(x, None, 4.0),
        K.rolling_std(x, window),
        K.returns(pos, [1, window], [window]),
        K.rsi_values(x, window),
        K.atr_rel(pos + 1, pos, pos + 0.5, window),
        K.range_vol(pos, pos + 1, pos, pos + 0.5, [window]),
        K.macd(pos, window, window + 3, 2),
        K.bollinger(x, window, 2.0),
        K.session_features(pos + 1, pos, pos + 0.5, pos, first),
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
        np.testing.assert_array_equal(part, whole[..., :k])  # bit for bit, NaN where NaN


def test_bad_arguments_are_refused() -> None:
    x = np.arange(10.0)
    with pytest.raises(ValueError, match="window must be at least 2"):
        K.zscores(x, 1, None)
    with pytest.raises(ValueError, match="window must be at least 2"):
        K.rolling_std(x, 1, ddof=1)
    with pytest.raises(ValueError, match="10 bars but 9 flags"):
        K.session_features(x, x, x, x, x[:9] > 5)
    with pytest.raises(ValueError, match="need n >= 1"):
        K.rsi_values(x, 0)
    with pytest.raises(ValueError, match="spans must be >= 1"):
        K.macd(x, 0, 26, 9)


def test_expressions_turn_undefined_rows_into_nulls() -> None:
    o, h, lo, c, v = _bars(50, seed=1)
    frame = pl.DataFrame({"o": o, "h": h, "l": lo, "c": c, "v": v})
    out = frame.select(
        K.rolling_std_expr(pl.col("c"), 5).alias("sd"),
        K.zscore_expr(pl.col("c"), 5).alias("z"),
        K.rsi_expr(pl.col("c"), 14).alias("rsi"),
        K.atr_rel_expr(pl.col("h"), pl.col("l"), pl.col("c"), 3).alias("atr"),
        K.range_vol_expr(pl.col("o"), pl.col("h"), pl.col("l"), pl.col("c"), [4]).alias("rv"),
    ).unnest("rv")
    assert out.columns == ["sd", "z", "rsi", "atr", "park_4", "gk_4"]
    assert out.null_count().row(0) == (4, 4, 14, 2, 3, 3)
    assert all(dtype == pl.Float32 for dtype in out.dtypes)
    assert not out.select(pl.any_horizontal(pl.all().is_nan()).any()).item()
