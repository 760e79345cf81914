"""Every markdown table the report and the Prefect artifacts produce parses (issue 16).

A small GitHub-flavoured-markdown table checker (:func:`table_problems`): a table is a
header row followed by a delimiter row; every row of a table must have as many cells
(split on UNESCAPED pipes) as the header, the delimiter row must be valid, a table must
start and end a block (blank lines around it), and no line starting with a pipe may stand outside
a table. It is run on ``report.md`` (before and after the registry decision is added) and
on every markdown text and table the artifact tasks of ``tasks/artifacts.py`` hand to
Prefect, captured by replacing Prefect's ``create_*_artifact`` functions in a subprocess
(so that this test never imports Prefect into the test session).
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sentio.orchestration import ingest_quality_markdown
from sentio.report import add_registry_decision, build_report, markdown_table, md_cell
from tests.test_report_reader import RUN_INFO, cfg, ingest_summary, write_daily_runs

REPO = Path(__file__).resolve().parents[1]
_DELIMITER = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")


def cells(line: str) -> list[str]:
    """The cells of a table row: split on pipes not escaped by a backslash."""
    text = line.strip()
    out: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == "|":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    if text.startswith("|"):
        out = out[1:]
    if out and text.endswith("|") and not text.endswith("\\|"):
        out = out[:-1]
    return [c.strip() for c in out]


def table_problems(markdown: str) -> list[str]:
    """Why the tables of ``markdown`` would not render as tables (empty: they all do)."""
    lines = markdown.splitlines()
    problems: list[str] = []
    i, fenced = 0, False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or line.lstrip().startswith("```"):
            i += 1
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if "|" in line and _DELIMITER.match(nxt) and "-" in nxt:
            header, delim = cells(line), cells(nxt)
            if i > 0 and lines[i - 1].strip():
                problems.append(f"line {i + 1}: table without a blank line before it")
            if len(header) != len(delim):
                problems.append(
                    f"line {i + 1}: header has {len(header)} cells, delimiter row "
                    f"{len(delim)}: {line!r}"
                )
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                n = len(cells(lines[j]))
                if n != len(header):
                    problems.append(
                        f"line {j + 1}: row has {n} cells, header {len(header)}: {lines[j]!r}"
                    )
                j += 1
            if j < len(lines) and lines[j].strip():
                problems.append(
                    f"line {j + 1}: text right after a table (a row broken by a newline?): "
                    f"{lines[j]!r}"
                )
            i = j
            continue
        if line.strip().startswith("|"):
            problems.append(f"line {i + 1}: table row outside a table: {line!r}")
        i += 1
    return problems


# --------------------------------------------------------------------------------------
# the checker itself


def test_checker_rejects_the_old_exposure_header() -> None:
    """The header the report used to write, `mean |exposure|`, breaks its table."""
    old = (
        "### Per fold\n\n"
        "| series | bars | Sharpe | Sharpe CI | total return | total return CI | max DD | "
        "mean |exposure| | trades |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| agent | 10 | 0.1 | n/a | 0.01 | n/a | 0.02 | 0.5 | 3 |\n"
    )
    problems = table_problems(old)
    assert problems and "header has 11 cells, delimiter row 9" in problems[0]
    fixed = old.replace("mean |exposure|", "mean \\|exposure\\|")
    assert table_problems(fixed) == []


def test_checker_catches_ragged_rows_and_stray_rows() -> None:
    ragged = "\n| a | b |\n|---|---|\n| 1 | 2 | 3 |\n"
    assert "row has 3 cells, header 2" in table_problems(ragged)[0]
    stray = "text\n\n| a | b |\n"
    assert "outside a table" in table_problems(stray)[0]
    glued = "some paragraph\n| a | b |\n|---|---|\n"
    assert "without a blank line" in table_problems(glued)[0]
    newline_in_cell = "\n| a | b |\n|---|---|\n| 1 | two\nlines |\n"
    assert "right after a table" in table_problems(newline_in_cell)[0]
    assert cells("| a \\| b | c |") == ["a \\| b", "c"]
    assert cells("| a \\\\| b |") == ["a \\\\", "b"]  # an escaped backslash, then a pipe


def test_markdown_table_escapes_cells() -> None:
    text = markdown_table(["mean |exposure|", "b"], [["x\ny", "C:\\dir|x"]])
    assert table_problems("\n" + text + "\n") == []
    assert md_cell("a|b\nc") == "a\\|b c"
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["a"], [["1", "2"]])


# --------------------------------------------------------------------------------------
# the report and the artifacts


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    root = tmp_path_factory.mktemp("md")
    runs = write_daily_runs(root / "runs")
    summary = build_report(
        runs,
        root / "report",
        cfg=cfg(),
        ingest_summary=ingest_summary(),
        profile={"train (s)": 12.0, "devices": "cpu | cuda"},
        run_info=RUN_INFO,
    )
    return root, runs, summary


DECISION: dict[str, Any] = {
    "candidate": "v0003",
    "promoted": False,
    "champion_before": None,
    "champion_after": None,
    "reasons": ["DSR 0.12 < 0.95 | the gate", "max drawdown 0.68 > 0.5"],
    "checks": ["sharpe | window"],
    "registered": ["v0001", "v0002", "v0003"],
    "new_versions": 3,
    "registry": "/work/.sentio/registry",
    "candidate_fold": 2,
    "candidate_seed": 0,
    "candidate_metrics": {
        "sharpe": 0.1,
        "dsr": 0.12,
        "max_drawdown": 0.68,
        "n_bars": 160,
        "window_start": "2017-04-10",
        "window_end": "2017-11-17",
    },
    "champion_metrics": {},
    "compare_window": None,
    "versions": [{"fold": f, "seed": 0, "version": f"v000{f + 1}", "new": True} for f in range(3)],
}

_CAPTURE = r"""
import json, sys
import tasks.artifacts as arts

captured = {"markdown": [], "tables": []}

def markdown(markdown, key=None, description=None):
    captured["markdown"].append({"key": key, "text": markdown, "description": description})
    return "id"

def table(table, key=None, description=None):
    captured["tables"].append({"key": key, "rows": table, "description": description})
    return "id"

def link(link, link_text=None, key=None, description=None):
    return "id"

arts.create_markdown_artifact = markdown
arts.create_table_artifact = table
arts.create_link_artifact = link
inputs = json.load(open(sys.argv[1]))
arts.publish_ingest_artifacts.fn(inputs["ingest"])
arts.publish_features_artifacts.fn(inputs["features"])
arts.publish_regimes_artifacts.fn(inputs["regimes"])
arts.publish_folds_artifacts.fn(inputs["folds"])
arts.publish_train_artifacts.fn(inputs["train"])
arts.publish_report_artifacts.fn(inputs["report"])
arts.publish_registry_artifacts.fn(inputs["decision"])
json.dump(captured, open(sys.argv[2], "w"))
"""


def _stage_summaries(runs: list[dict[str, Any]], report: dict[str, Any]) -> dict[str, Any]:
    """Summaries of every stage, shaped as the stages return them."""
    return {
        "ingest": ingest_summary(),
        "features": {
            "n_features": 2,
            "rows": 480,
            "normalisation": "rolling | z",
            "start": "2016-01-04",
            "end": "2017-11-17",
            "table": [
                {"column": c, "count": 480, "mean": 0.01, "std": 1.0, "min": -3.0, "max": 3.0}
                for c in ("log_ret_1", "vol|20")
            ],
        },
        "regimes": {
            "method": "hmm",
            "rows": 480,
            "folds": [
                {
                    "fold": f,
                    "method": "hmm",
                    "rows_train": 300,
                    "regimes_test": {
                        "regimes": [
                            {
                                "label": k,
                                "share": 1 / 3,
                                "mean_return": 1e-4,
                                "volatility": 0.01 * (k + 1),
                                "mean_dwell_bars": 12.5,
                                "n_runs": 4,
                            }
                            for k in range(3)
                        ]
                    },
                }
                for f in range(3)
            ],
        },
        "folds": {
            "n_folds": 3,
            "method": "walk_forward",
            "samples": 480,
            "folds": [
                {
                    "fold": f,
                    "test_blocks": [{"start": f"2016-0{f + 1}-04", "end": f"2016-0{f + 2}-01"}],
                    "test_rows": 160,
                    "train_rows": 300,
                    "n_train_ranges": 1,
                    "purged": 1,
                    "embargoed": 5,
                }
                for f in range(3)
            ],
        },
        "train": {"runs": runs},
        "report": report,
        "decision": DECISION,
    }


def _captured(tmp_path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    src, out = tmp_path / "inputs.json", tmp_path / "captured.json"
    src.write_text(json.dumps(inputs, default=str))
    env = {**os.environ, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    done = subprocess.run(
        [sys.executable, "-c", _CAPTURE, str(src), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_report_markdown_tables_parse(
    built: tuple[Path, list[dict[str, Any]], dict[str, Any]],
) -> None:
    _, _, summary = built
    md = Path(summary["paths"]["markdown"]).read_text(encoding="utf-8")
    assert md.count("\n| ") > 40  # the tables are there
    assert table_problems(md) == []
    assert md.count(summary["verdict"]) == 1
    page = Path(summary["paths"]["html"]).read_text(encoding="utf-8")
    assert page.count(html.escape(summary["verdict"])) == 1


def test_artifacts_markdown_and_tables_parse(
    built: tuple[Path, list[dict[str, Any]], dict[str, Any]], tmp_path: Path
) -> None:
    root, runs, summary = built
    captured = _captured(tmp_path, _stage_summaries(runs, summary))
    keys = [m["key"] for m in captured["markdown"]]
    assert keys == ["data-quality", "report", "registry-decision"]
    for item in captured["markdown"]:
        assert table_problems(item["text"]) == [], item["key"]
    report_md = next(m for m in captured["markdown"] if m["key"] == "report")
    assert report_md["text"].count(summary["verdict"]) == 1
    assert report_md["text"].startswith("# Sentio out-of-sample report")
    assert "plots/" not in report_md["text"]  # images the UI cannot load are not linked
    data_quality = next(m for m in captured["markdown"] if m["key"] == "data-quality")
    assert "10 sessions missing: 2016-10-10 .. 2016-10-21" in data_quality["text"]
    # table artifacts: one flat row shape per table, no line breaks in the values
    assert [t["key"] for t in captured["tables"]] == [
        "ingest-summary",
        "feature-summary",
        "regime-summary",
        "folds",
        "training",
        "registry-versions",
    ]
    for t in captured["tables"]:
        rows = t["rows"]
        assert rows, t["key"]
        assert all(set(r) == set(rows[0]) for r in rows), t["key"]
        for r in rows:
            for v in r.values():
                assert not isinstance(v, dict | list), (t["key"], v)
                assert "\n" not in str(v), (t["key"], v)


def test_report_after_the_registry_decision_still_parses(
    built: tuple[Path, list[dict[str, Any]], dict[str, Any]],
) -> None:
    root, _, summary = built
    add_registry_decision(root / "report", DECISION)
    md = Path(summary["paths"]["markdown"]).read_text(encoding="utf-8")
    assert table_problems(md) == []
    assert md.count(summary["verdict"]) == 1
    assert "registry: pending" not in md and "version v0003; registry: not promoted" in md


def test_ingest_quality_markdown_without_optional_keys() -> None:
    """A minimal ingest summary (no gaps key, no inputs) still gives valid tables."""
    md = ingest_quality_markdown({"rows_read": 3, "rows_kept": 3, "rows_quarantined": 0})
    assert table_problems(md) == []
    assert "- missing sessions: none" in md
