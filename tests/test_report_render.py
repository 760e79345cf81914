"""The HTML report opens in a browser with its plots (issue 7).

Two layers, on a real report built by :func:`sentio.report.build_report` from small
train-stage-like summaries (the helpers of ``tests/test_report.py``):

* structural checks that always run: the page parses, references no external resource,
  every ``<img>`` is a ``data:image/png;base64`` URI that decodes (PIL) to a plot of
  plausible size with drawn content, and the four plots are there under their captions;
* a real render: Debian's Chromium in headless mode takes a screenshot of the page
  (``file://``), and every embedded plot must be found in the screenshot, pixel for
  pixel, at its natural size. The negative controls corrupt one image of a copy of the
  page (three ways) and show that this check then fails for exactly that image. The
  render tests are skipped, with the reason, only when no Chromium binary is found
  (``SENTIO_CHROMIUM`` names one explicitly; ``.ci/run`` installs Debian's ``chromium``).

The helpers (:func:`find_chromium`, :func:`parse_page`, :func:`self_contained_problems`,
:func:`screenshot`, :func:`locate`, :func:`assert_report_renders`) are used by the
end-to-end test on the report of a real flow run too.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sentio.report import build_report
from tests.test_report import _cfg, _synthetic_runs

# the captions (h3 and alt text) the report gives its plots, in page order
PLOT_CAPTIONS = {
    "equity": "Equity vs references (regimes shaded)",
    "drawdown": "Drawdown",
    "exposure": "Exposure: mean per session and distribution",
    "fold_sharpe": "Per-fold Sharpe intervals",
    "learning_curve": "Learning curve (training episodes)",
    "validation_curve": "Validation (held-out training episodes)",
}
# the labels of the header lines, in order
HEADER_LABELS = ("Run:", "Data:", "Out of sample:", "Model:")
DATA_PNG = "data:image/png;base64,"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WINDOW = (1280, 4000)
CHROMIUM_TIMEOUT = 90.0
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# attributes that make a browser fetch something
URL_ATTRIBUTES = {"src", "href", "srcset", "poster", "data", "action", "formaction", "background"}
FETCHING_TAGS = {"script", "link", "iframe", "frame", "object", "embed", "audio", "video", "base"}


def find_chromium() -> str | None:
    """The Chromium binary: ``$SENTIO_CHROMIUM`` or the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get("SENTIO_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = find_chromium()
NO_CHROMIUM = (
    "no Chromium binary found (looked for $SENTIO_CHROMIUM, "
    + ", ".join(CHROMIUM_NAMES)
    + "; install it with `apt-get install -y chromium`): headless-browser render not checked"
)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)


# --------------------------------------------------------------------------------------
# structure


@dataclass
class Img:
    """One ``<img>``: its attributes and the text of the heading just before it."""

    attrs: dict[str, str]
    caption: str


@dataclass
class Page:
    """What :func:`parse_page` collects from an HTML document."""

    tags: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    images: list[Img] = field(default_factory=list)
    headings: list[tuple[str, str]] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._heading: str | None = None
        self._heading_text: list[str] = []
        self._in_style = False
        self._last_heading = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        self.page.tags.append((tag, a))
        if "style" in a:
            self.page.styles.append(a["style"])
        if tag == "img":
            self.page.images.append(Img(a, self._last_heading))
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading, self._heading_text = tag, []
        elif tag == "style":
            self._in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag == self._heading:
            self._last_heading = "".join(self._heading_text).strip()
            self.page.headings.append((tag, self._last_heading))
            self._heading = None
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.page.styles.append(data)
        else:
            self.page.text.append(data)
            if self._heading:
                self._heading_text.append(data)


def parse_page(text: str) -> Page:
    """Parse an HTML document with the standard library's parser."""
    parser = _Collector()
    parser.feed(text)
    parser.close()
    return parser.page


def self_contained_problems(page: Page) -> list[str]:
    """Everything in ``page`` that would make a browser load another resource."""
    problems = []
    for tag, attrs in page.tags:
        if tag in FETCHING_TAGS:
            problems.append(f"<{tag}> element {attrs}")
        for name, value in attrs.items():
            if name in URL_ATTRIBUTES and not value.strip().lower().startswith("data:"):
                problems.append(f"<{tag} {name}={value[:80]!r}>: not a data: URI")
    for css in page.styles:
        for url in re.findall(r"url\(\s*['\"]?([^'\")]*)", css, flags=re.I):
            if not url.strip().lower().startswith("data:"):
                problems.append(f"CSS url({url[:80]})")
        if re.search(r"@import", css, flags=re.I):
            problems.append("CSS @import")
    return problems


def decode_data_png(src: str) -> Image.Image:
    """The RGB image (composited on white, the page's background) of a base64 PNG data URI."""
    assert src.startswith(DATA_PNG), f"not a base64 PNG data URI: {src[:60]!r}"
    raw = base64.b64decode(src[len(DATA_PNG) :], validate=True)
    assert raw.startswith(PNG_MAGIC), "data URI does not hold a PNG"
    with Image.open(io.BytesIO(raw)) as im:
        assert im.format == "PNG"
        im.load()
        rgba = im.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def plot_problems(image: Image.Image, *, drawn_data: bool = True) -> list[str]:
    """Why ``image`` is not a plausible plot: size, uniform pixels, nothing coloured drawn.

    ``drawn_data=False`` drops the last check (a flat agent's drawdown plot has only axes).
    """
    w, h = image.size
    problems = []
    if not (300 <= w <= 2000 and 150 <= h <= 1500):
        problems.append(f"implausible size {w}x{h}")
    a = np.asarray(image, dtype=np.int16)
    colours = _n_colours(a)
    non_white = float((a.min(axis=-1) < 250).mean())
    chromatic = float((np.ptp(a, axis=-1) > 40).mean())
    if colours < 20 or non_white < 0.01:
        problems.append(f"(nearly) blank: {colours} colours, {non_white:.2%} non-white pixels")
    if drawn_data and chromatic < 0.001:  # axes and text are grey; data are in colour
        problems.append(f"no coloured data drawn: {chromatic:.3%} chromatic pixels")
    return problems


def shaded_bands(image: Image.Image, min_share: float = 0.05) -> int:
    """How many light tinted colours each cover ``min_share`` of the image (regime shading)."""
    a = np.asarray(image, dtype=np.int16).reshape(-1, 3)
    light = a[(a.min(axis=-1) > 190) & (np.ptp(a, axis=-1) > 12)]
    if light.size == 0:
        return 0
    _, counts = np.unique(_packed(light), return_counts=True)
    return int((counts >= min_share * a.shape[0]).sum())


def plot_images(html_path: Path) -> dict[str, Image.Image]:
    """The embedded plots of a report page, keyed as in PLOT_CAPTIONS (by their alt text)."""
    page = parse_page(html_path.read_text(encoding="utf-8"))
    by_alt = {img.attrs.get("alt", ""): img for img in page.images}
    return {
        key: decode_data_png(by_alt[caption].attrs["src"])
        for key, caption in PLOT_CAPTIONS.items()
        if caption in by_alt
    }


def assert_report_structure(html_path: Path, *, drawn_data: bool = True) -> Page:
    """The always-run checks of a report page (see the module docstring and plot_problems)."""
    text = html_path.read_text(encoding="utf-8")
    page = parse_page(text)
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert ("html", {}) in page.tags and any(t == "body" for t, _ in page.tags)
    assert self_contained_problems(page) == []
    assert not re.search(r"(https?|file|ftp):", "".join(page.styles)), "URL in CSS"
    assert [img.attrs.get("alt") for img in page.images] == list(PLOT_CAPTIONS.values())
    for img in page.images:
        alt = img.attrs["alt"]
        assert img.caption == alt, f"plot {alt!r} is under the heading {img.caption!r}"
        image = decode_data_png(img.attrs["src"])
        assert plot_problems(image, drawn_data=drawn_data) == [], alt
    assert ("h2", "Plots") in page.headings
    assert sum("Verdict:" in t for t in page.text) == 1
    for label in HEADER_LABELS:  # the header, above the verdict
        assert label in page.text, label
        assert page.text.index(label) < page.text.index("Verdict:"), label
    return page


# --------------------------------------------------------------------------------------
# rendering


def screenshot(
    html_path: Path, out: Path, *, window: tuple[int, int] = WINDOW, chromium: str | None = None
) -> np.ndarray:
    """Render ``html_path`` (file://) in headless Chromium; the screenshot as an RGB array.

    A fresh profile, HOME and XDG folders in a temporary folder; no network features;
    device scale factor 1 so images are painted at their natural size.
    """
    binary = chromium or CHROMIUM
    assert binary, NO_CHROMIUM
    with tempfile.TemporaryDirectory(prefix="sentio-chromium-") as tmp:
        env = {
            **os.environ,
            "HOME": tmp,
            "XDG_CONFIG_HOME": f"{tmp}/config",
            "XDG_CACHE_HOME": f"{tmp}/cache",
        }
        args = [
            binary,
            "--headless",
            "--no-sandbox",  # we may run as root (CI containers)
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={tmp}/profile",
            f"--window-size={window[0]},{window[1]}",
            f"--screenshot={out}",
            html_path.resolve().as_uri(),
        ]
        out.unlink(missing_ok=True)
        try:
            done = subprocess.run(
                args, env=env, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"chromium did not finish in {CHROMIUM_TIMEOUT:.0f} s: {exc}")
    log = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, f"chromium exited with {done.returncode}:\n{log}"
    assert out.is_file(), f"chromium wrote no screenshot:\n{log}"
    with Image.open(out) as shot:
        assert shot.size == window, shot.size
        return np.asarray(shot.convert("RGB"), dtype=np.int16)


def _packed(a: np.ndarray) -> np.ndarray:
    """RGB int arrays (..., 3) as one int32 per pixel, for fast colour comparisons."""
    a = a.astype(np.int32)
    return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]


def _n_colours(a: np.ndarray) -> int:
    return int(np.unique(_packed(a).reshape(-1)).size)


def locate(
    screen: np.ndarray, image: Image.Image, *, tolerance: int = 16, max_bad: float = 0.005
) -> tuple[int, int] | None:
    """Top-left (y, x) where ``image`` is painted at natural size in ``screen``, or None.

    Candidate origins come from the screen pixels that have one of the image's rarest
    (not near-white) colours, exactly, or when that finds nothing within ``tolerance``; a
    candidate is a match when at most ``max_bad`` of the image's pixels differ from the
    screen by more than ``tolerance`` in a channel.
    """
    a = np.asarray(image, dtype=np.int16)
    h, w, _ = a.shape
    hs, ws, _ = screen.shape
    if h > hs or w > ws:
        return None
    packed = _packed(a).reshape(-1)
    colours, first, counts = np.unique(packed, return_index=True, return_counts=True)
    light = np.minimum(np.minimum(colours >> 16, (colours >> 8) & 255), colours & 255) >= 230
    order = [int(i) for i in np.argsort(counts, kind="stable") if not light[i]][:5]
    anchors = [divmod(int(first[i]), w) for i in order] or [(h // 2, w // 2)]
    screen_packed = _packed(screen)
    rng = np.random.default_rng(0)
    py, px = rng.integers(0, h, 128), rng.integers(0, w, 128)

    def verify(near: np.ndarray, ay: int, ax: int) -> tuple[int, int] | None:
        ys, xs = np.nonzero(near)
        y0, x0 = ys - ay, xs - ax
        ok = (y0 >= 0) & (x0 >= 0) & (y0 + h <= hs) & (x0 + w <= ws)
        y0, x0 = y0[ok], x0[ok]
        for start in range(0, y0.size, 2048):  # prefilter on a sample of pixels
            cy, cx = y0[start : start + 2048], x0[start : start + 2048]
            sample = screen[cy[:, None] + py, cx[:, None] + px]
            bad = (np.abs(sample - a[py, px]).max(axis=-1) > tolerance).mean(axis=1)
            for i in np.flatnonzero(bad <= 4 * max_bad + 2 / 128):
                y, x = int(cy[i]), int(cx[i])
                region = screen[y : y + h, x : x + w]
                if (np.abs(region - a).max(axis=-1) > tolerance).mean() <= max_bad:
                    return y, x
        return None

    for ay, ax in anchors:
        found = verify(screen_packed == packed[ay * w + ax], ay, ax)
        if found:
            return found
    ay, ax = anchors[0]  # colours shifted a little (colour management): tolerant anchor
    return verify(np.abs(screen - a[ay, ax]).max(axis=-1) <= tolerance, ay, ax)


def screen_problems(screen: np.ndarray) -> list[str]:
    """Why a screenshot looks blank: too few colours or non-white pixels, no dark text."""
    problems = []
    colours = _n_colours(screen)
    non_white = float((screen.min(axis=-1) < 250).mean())
    if colours < 100 or non_white < 0.02:
        problems.append(f"blank screenshot: {colours} colours, {non_white:.2%} non-white")
    if not (screen[:120].max(axis=-1) < 80).any():
        problems.append("no dark text in the first 120 rows (the title)")
    return problems


def window_for(html_path: Path) -> tuple[int, int]:
    """WINDOW, made taller when the page looks longer (generous per-row and per-plot heights)."""
    page = parse_page(html_path.read_text(encoding="utf-8"))
    rows = sum(1 for tag, _ in page.tags if tag in ("tr", "p", "li"))
    plots = sum(decode_data_png(i.attrs["src"]).size[1] for i in page.images if i.attrs.get("src"))
    estimate = 400 + 30 * rows + 80 * len(page.headings) + plots + 40 * len(page.images)
    return WINDOW[0], max(WINDOW[1], min(16000, -(-estimate // 500) * 500))


def painted_plots(html_path: Path, out: Path) -> dict[str, tuple[int, int] | None]:
    """Render ``html_path``; where each embedded plot was found in the screenshot (or None)."""
    screen = screenshot(html_path, out, window=window_for(html_path))
    assert screen_problems(screen) == []
    return {key: locate(screen, image) for key, image in plot_images(html_path).items()}


def assert_report_renders(html_path: Path, out: Path) -> dict[str, tuple[int, int]]:
    """Every plot of the page is painted, at natural size, in page order, without overlap."""
    images = plot_images(html_path)
    assert set(images) == set(PLOT_CAPTIONS)
    found = painted_plots(html_path, out)
    missing = [k for k, pos in found.items() if pos is None]
    assert not missing, f"plots not painted in the screenshot {out}: {missing}"
    positions = {k: pos for k, pos in found.items() if pos is not None}
    bottom = 0
    for key in PLOT_CAPTIONS:  # page order: each plot below the previous one
        y, x = positions[key]
        assert y >= bottom, f"{key} at y={y} overlaps the plot above (ends at {bottom})"
        bottom = y + images[key].size[1]
    return positions


# --------------------------------------------------------------------------------------
# the report under test


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of two folds with two regimes, an ingest summary and a profile."""
    root = tmp_path_factory.mktemp("render")
    runs = _synthetic_runs(root / "runs", mean=0.0)
    summary: dict[str, Any] = build_report(
        runs,
        root / "report",
        cfg=_cfg(),
        ingest_summary=INGEST,
        profile={"train_seconds": 12.5, "steps_per_second": 800.0, "peak_rss_mb": 900.0},
        run_info={"name": "render-run", "started": "2024-02-01T07:00:00+00:00"},
    )
    return Path(summary["paths"]["html"])


# the ingest summary of the fixture's minute bars (two folds of three sessions each)
INGEST: dict[str, Any] = {
    "rows_read": 2400,
    "rows_kept": 2340,
    "rows_dropped_duplicates": 60,
    "rows_quarantined": 0,
    "symbols": ["QQQ", "SQQQ", "TQQQ"],
    "derived_symbols": ["SQQQ", "TQQQ"],
    "bar_seconds": 60,
    "frequency": "1min",
    "start": "2024-01-08T14:30:00+00:00",
    "end": "2024-01-17T20:59:00+00:00",
    "sessions": 6,
    "gaps": [{"after": "2024-01-10", "before": "2024-01-16", "sessions_missing": 2}],
    "output": "/work/.sentio/ingest/key/bars.feather",
    "output_sha256": "0" * 64,
}


def _with_image(html_path: Path, key: str, new_src: str, out: Path) -> Path:
    """A copy of the page whose plot ``key`` has the src ``new_src``."""
    text = html_path.read_text(encoding="utf-8")
    caption = re.escape(PLOT_CAPTIONS[key])
    pattern = rf'(<img alt="{caption}" src=")([^"]*)(")'
    new, n = re.subn(pattern, lambda m: m.group(1) + new_src + m.group(3), text)
    assert n == 1, f"plot {key} not found in the page"
    out.write_text(new, encoding="utf-8")
    return out


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _corrupt(src: str, how: str) -> str:
    """A damaged copy of a base64 PNG data URI."""
    raw = bytearray(base64.b64decode(src[len(DATA_PNG) :]))
    if how == "signature":  # not a PNG any more
        raw[1:4] = b"XYZ"
    elif how == "pixel-data":  # bytes of the compressed image data overwritten
        start = raw.index(b"IDAT") + 4
        mid = start + (len(raw) - start) // 3
        raw[mid : mid + 64] = bytes(64)
    elif how == "truncated":  # the second half of the file lost
        raw = raw[: len(raw) // 2]
    else:  # pragma: no cover
        raise ValueError(how)
    return DATA_PNG + base64.b64encode(bytes(raw)).decode("ascii")


# --------------------------------------------------------------------------------------
# structural checks (always run)


def test_report_html_structure(report_html: Path) -> None:
    assert_report_structure(report_html)


def test_report_html_header(report_html: Path) -> None:
    """The header: run, start, data range and frequency, folds x seeds, registry, warning."""
    page = parse_page(report_html.read_text(encoding="utf-8"))
    text = " ".join(" ".join(page.text).split())
    for needle in (
        "Run: render-run, started 2024-02-01 07:00 UTC",
        "Data: 1-minute bars, 2024-01-08 09:30 .. 2024-01-17 15:59 (New York time)",
        "Out of sample: 2024-01-08 09:30 .. 2024-01-17 15:59: 2 folds x 1 seeds (2 trainings)",
        "Model: registry: pending",
        "Warning: SQQQ and TQQQ prices are derived from QQQ with the daily-reset identity, "
        "not traded prices.",
        "2 sessions missing: 2024-01-11 .. 2024-01-12 (between 2024-01-10 and 2024-01-16)",
    ):
        assert needle in text, needle
    assert "/work/.sentio" not in text and "0" * 64 not in text  # paths stay in metrics.json
    assert len(page.images) == len(PLOT_CAPTIONS) == 6


def test_time_plots_of_the_page_have_date_axes(report_html: Path) -> None:
    """The equity, drawdown and exposure figures of the fixture: date axes (ticks in
    January 2024), dashed fold boundaries."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from sentio.report import load_bars, stitch, time_figures

    root = report_html.parents[1]
    runs = [{"output": str(p)} for p in sorted((root / "runs").glob("run_0_*/backtest.feather"))]
    head = stitch([load_bars(r) for r in runs])  # type: ignore[misc]
    doc = json.loads((report_html.parent / "metrics.json").read_text())
    figs = time_figures(head, {}, doc["folds"], n_regimes=3)
    try:
        for name, fig in figs.items():
            ax = fig.axes[0]
            assert isinstance(ax.xaxis.get_major_formatter(), mdates.ConciseDateFormatter), name
            ticks = [mdates.num2date(t).strftime("%Y-%m") for t in ax.get_xticks()]
            assert ticks and set(ticks) <= {"2024-01"}, (name, ticks)
            assert "date (New York" in ax.get_xlabel(), name
            assert sum(ln.get_linestyle() == "--" for ln in ax.get_lines()) == 3, name
    finally:
        for fig in figs.values():
            plt.close(fig)


def test_equity_plot_shades_the_regimes(report_html: Path) -> None:
    plots = plot_images(report_html)
    # two regimes in the test data: two light tints behind the lines (narrow bands: the
    # date axis keeps the nights between the fixture's six minute-bar sessions unshaded)
    assert shaded_bands(plots["equity"], min_share=0.01) >= 2
    for key in ("drawdown", "exposure", "fold_sharpe", "learning_curve", "validation_curve"):
        assert shaded_bands(plots[key]) == 0, key


def test_structure_checks_catch_broken_pages(report_html: Path) -> None:
    """The checkers themselves: external resources, blank and non-PNG images are caught."""
    page = parse_page(
        '<html><head><link rel="stylesheet" href="https://cdn.example/x.css">'
        "<style>body{background:url(http://x/y.png)}</style>"
        '<script src="app.js"></script></head><body>'
        '<img src="file:///tmp/a.png"><img src="plots/equity.png">'
        '<a href="//cdn.example/">x</a><div style="background:url(b.png)"></div></body></html>'
    )
    problems = "\n".join(self_contained_problems(page))
    for needle in ("<link>", "<script>", "file:///tmp/a.png", "plots/equity.png", "//cdn", "b.png"):
        assert needle in problems, needle
    clean = parse_page(report_html.read_text(encoding="utf-8"))
    assert self_contained_problems(clean) == []

    blank = Image.new("RGB", (800, 300), (255, 255, 255))
    assert any("blank" in p for p in plot_problems(blank))
    axes_only = blank.copy()
    a = np.asarray(axes_only).copy()
    a[20:280, 40] = a[280, 40:780] = 0  # black axes, no data
    assert any("no coloured data" in p for p in plot_problems(Image.fromarray(a)))
    assert plot_problems(Image.new("RGB", (40, 40), (200, 0, 0)))  # too small

    src = parse_page(report_html.read_text(encoding="utf-8")).images[0].attrs["src"]
    with pytest.raises((binascii.Error, ValueError)):
        decode_data_png(src[:-3] + "!!!")  # not base64
    with pytest.raises(Exception):  # noqa: B017 - PIL raises OSError or SyntaxError
        decode_data_png(_corrupt(src, "truncated"))
    with pytest.raises(AssertionError):
        decode_data_png(_corrupt(src, "signature"))


# --------------------------------------------------------------------------------------
# headless browser


@needs_chromium
def test_report_renders_in_headless_chromium(report_html: Path, tmp_path: Path) -> None:
    positions = assert_report_renders(report_html, tmp_path / "report.png")
    # the plots are painted left-aligned in one column of the page
    assert len({x for _, x in positions.values()}) == 1, positions


@needs_chromium
@pytest.mark.parametrize("how", ["signature", "pixel-data", "truncated", "blank", "removed"])
def test_render_check_fails_on_a_broken_image(report_html: Path, tmp_path: Path, how: str) -> None:
    """Negative controls: one plot damaged in a copy of the page; exactly it is not found."""
    victim = "drawdown"
    original = parse_page(report_html.read_text(encoding="utf-8"))
    src = next(i.attrs["src"] for i in original.images if i.attrs["alt"] == PLOT_CAPTIONS[victim])
    if how == "blank":  # a valid PNG of the right size, all white
        size = plot_images(report_html)[victim].size
        new_src = DATA_PNG + base64.b64encode(_png_bytes(Image.new("RGB", size, "white"))).decode()
    elif how == "removed":
        new_src = ""
    else:
        new_src = _corrupt(src, how)
    broken = _with_image(report_html, victim, new_src, tmp_path / "broken.html")

    expected = plot_images(report_html)
    screen = screenshot(broken, tmp_path / "broken.png", window=window_for(report_html))
    found = {key: locate(screen, image) for key, image in expected.items()}
    assert found[victim] is None, f"damaged plot ({how}) still found at {found[victim]}"
    assert all(found[k] is not None for k in expected if k != victim), found
    # and the page-level structural check reports it too
    with pytest.raises((AssertionError, OSError, SyntaxError, ValueError)):
        assert_report_structure(broken)
