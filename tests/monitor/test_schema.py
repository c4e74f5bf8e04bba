"""The published schema and README cannot drift from the dataclasses."""
from __future__ import annotations

import re
from pathlib import Path

from monitor import schema

README = Path(__file__).resolve().parents[2] / "README.md"


def test_published_schema_is_current():
    assert schema.SCHEMA_PATH.read_text() == schema.render(), \
        "run: python -m monitor.schema > monitor/schema/events.schema.json"


def test_every_field_has_a_description():
    assert schema.documented_fields() - set(schema.DOCS) == set()


def test_readme_documents_every_field():
    text = README.read_text()
    table = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))
    assert schema.documented_fields() - table == set()
