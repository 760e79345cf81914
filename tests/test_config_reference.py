"""Every setting is described with its unit, and the descriptions are what users read.

The configuration reference in README.md is generated from the descriptions
(:func:`sentio.config.config_reference_markdown`) and the command-line options that set a
setting show the same text in ``--help``; these tests keep the three in step and keep the
README from documenting settings that do not exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from sentio.cli import app
from sentio.config import (
    SentioConfig,
    auto_values,
    config_reference_markdown,
    describe,
    option_help,
    readme_with_config_reference,
)

README = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE = (
    'python -c \'import pathlib, sentio.config as c; p = pathlib.Path("README.md"); '
    "p.write_text(c.readme_with_config_reference(p.read_text()))'"
)


def settings(model: type[BaseModel] = SentioConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted name, field)`` of every field of every section, nested ones included."""
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        yield dotted, field
        for candidate in (field.annotation, *get_args(field.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                yield from settings(candidate, f"{dotted}.")


def may_be_auto(annotation: Any) -> bool:
    return any(
        getattr(a, "__origin__", None) is Literal and "auto" in get_args(a)
        for a in (annotation, *get_args(annotation))
    )


def test_every_setting_has_a_description() -> None:
    names = [name for name, _ in settings()]
    assert len(names) > 120 and "env.costs.half_spread_bps" in names
    assert "synth.regimes.drift_annual" in names  # the entries of a list of sections too
    missing = [name for name, field in settings() if not (field.description or "").strip()]
    assert not missing, f"settings without a description: {missing}"


def test_auto_settings_say_what_auto_gives() -> None:
    autos = [name for name, field in settings() if may_be_auto(field.annotation)]
    assert {"cv.embargo_bars", "env.flat_at_close", "train.n_envs"} <= set(autos)
    for name in autos:
        assert "'auto'" in describe(name), name
    # the bar counts the descriptions quote are the ones auto_values gives
    for bar_seconds in (60, 86_400):
        for name, value in auto_values(bar_seconds).items():
            if isinstance(value, int) and not isinstance(value, bool):
                assert f"{value:,}" in describe(name), (name, bar_seconds, value)


def test_the_readme_reference_is_the_generated_one() -> None:
    readme = README.read_text(encoding="utf-8")
    assert config_reference_markdown() in readme, f"README's reference is stale: {REGENERATE}"
    assert readme_with_config_reference(readme) == readme, REGENERATE


def test_the_reference_lists_every_setting_with_its_description() -> None:
    text = config_reference_markdown()
    for name, field in settings():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            assert f"#### `{name}`" in text  # a section: a table of its own
            continue
        shown = name.replace("synth.regimes.", "synth.regimes[].")
        assert f"| `{shown}` |" in text, name
        assert field.description.replace("|", "\\|") in text, name
    assert "| `env.costs.half_spread_bps` | `1.0` | number (>= 0) |" in text
    assert "| `cv.embargo_bars` | `auto` | integer or `auto` (>= 0) |" in text
    assert "| `synth.regimes[].vol_annual` | `0.14`, `0.22`, `0.45` |" in text


_FILES = {"html", "md", "json", "feather", "py", "yaml", "csv", "parquet", "zip", "txt"}


def test_the_readme_documents_only_settings_that_exist() -> None:
    text = README.read_text(encoding="utf-8")
    sections = "|".join(SentioConfig.model_fields)
    named = set(re.findall(rf"(?<![\w./-])((?:{sections})(?:\.\w+)+)", text))
    named |= {f"env.{n}" for n in re.findall(r"(?<![\w./-])((?:masks|costs)\.\w+)", text)}
    unknown = []
    for name in sorted(named):
        if name.rsplit(".", 1)[-1] in _FILES:
            continue  # a file name such as report.html
        try:
            describe(name)
        except KeyError:
            unknown.append(name)
    assert not unknown, f"README names settings that do not exist: {unknown}"
    assert len(named) > 30


@pytest.mark.parametrize(
    ("command", "setting"),
    [
        ("synth", "synth.years"),
        ("synth", "synth.edge_strength"),
        ("synth", "synth.random_walk"),
        ("ingest", "ingest.tz"),
        ("ingest", "ingest.bar_timestamp"),
        ("ingest", "ingest.max_quarantine_fraction"),
    ],
)
def test_option_help_is_the_setting_description(command: str, setting: str) -> None:
    args = [command, "--help"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    shown = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert " ".join(option_help(setting).split()) in shown


def test_option_help_names_the_setting_and_its_range() -> None:
    assert option_help("synth.edge_strength").endswith("(synth.edge_strength: >= 0, <= 0.5).")
    assert option_help("ingest.on_bad_rows").endswith("(ingest.on_bad_rows: quarantine, error).")
    assert option_help("cv.embargo_bars").endswith("(cv.embargo_bars: >= 0).")
    with pytest.raises(KeyError):
        describe("cv.embargo")
