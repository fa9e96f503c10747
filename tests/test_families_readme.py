"""README.md's families x stages table is the one generated from the family table."""

from __future__ import annotations

from pathlib import Path

from compress.families import FAMILIES
from compress.families_readme import readme_block, table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_equals_the_generated_one():
    got = readme_block(README.read_text(encoding="utf-8"))
    assert got is not None, "README.md lost its families:start / families:end markers"
    assert got == table(), "README.md is stale: run python -m compress.families_readme --write"


def test_generated_table_has_a_row_per_family_and_says_what_is_refused():
    text = table()
    for f in FAMILIES:
        assert f"| `{f.name}` (" in text
    assert "refused: fused qkv_proj" in text  # phi3 width pruning
    assert "AWQ norm folds only" in text
    assert "rope_type" in text and "before a weight is read" in text
