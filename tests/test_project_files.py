"""The files a user looks for: a licence matching the package metadata, a changelog, docs of
where each command writes."""

from pathlib import Path

import tomllib

import sparse_attention

ROOT = Path(__file__).resolve().parents[1]


def test_license_matches_the_package_metadata():
    license_text = (ROOT / "LICENSE").read_text()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert declared == "MIT" and license_text.startswith("MIT License")


def test_changelog_names_the_current_version():
    assert f"## {sparse_attention.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_lm_docs_say_where_visualize_writes():
    assert "writes into `RUN_DIR/visualize/`" in (ROOT / "docs" / "lm.md").read_text()
