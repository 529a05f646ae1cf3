"""config/README.md, the configuration reference, is generated from the live config/schema.yaml: it fails here
when it is stale (regenerate with `python -m cellduality.config_reference`) or when a schema key is missing."""

import copy
from pathlib import Path

import pytest

from cellduality.config import load_schema
from cellduality.config_reference import REGENERATE, main, render_reference, schema_keys

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
REFERENCE = ROOT / "config" / "README.md"


@pytest.fixture(scope="module")
def schema() -> dict:
    return load_schema(SCHEMA)


@pytest.fixture(scope="module")
def reference(schema) -> str:
    return render_reference(schema)


def all_property_names(node) -> set[str]:
    """Every name under any ``properties`` of the schema, found without the generator's own walk."""
    names: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict):
            names |= set(node["properties"])
        for value in node.values():
            names |= all_property_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= all_property_names(value)
    return names


def rows(reference: str) -> dict[str, str]:
    """``{dotted key: its table row}`` of the reference."""
    return {line.split("`")[1]: line for line in reference.splitlines() if line.startswith("| `")}


def test_config_readme_is_up_to_date(reference):
    assert REFERENCE.is_file(), f"config/README.md is missing; generate it with `{REGENERATE}`"
    assert REFERENCE.read_text() == reference, (
        f"config/README.md is stale: config/schema.yaml changed; regenerate it with `{REGENERATE}`")


def test_every_schema_key_has_a_row_with_type_default_and_description(schema, reference):
    table = rows(reference)
    keys = schema_keys(schema)
    assert len(keys) == len(set(keys)) and set(keys) == set(table), set(keys) ^ set(table)
    assert {key.rsplit(".", 1)[-1] for key in keys} == all_property_names(schema)
    for section, node in schema["properties"].items():  # every key of an ordinary section, by its dotted name
        for key, child in node.get("properties", {}).items():
            row = table[f"{section}.{key}"]
            cells = [cell.strip() for cell in row.split(" | ")]
            assert len(cells) == 4 and all(cells), row
            if child.get("description"):
                assert " ".join(child["description"].split())[:12] in row, row
    assert len(schema_keys(schema)) > 150


def test_nested_sections_and_the_dataset_entry_are_documented(schema, reference):
    for heading in ("## `datasets.<name>`", "### `datasets.<name>.obs_table`", "### `datasets.<name>.pairing`",
                    "### `model.embedded`", "### `model.lora`", "### `evaluation.embedding`",
                    "### `filtering.per_task.<task>`", "## `sft`", "## Top-level keys"):
        assert f"\n{heading}\n" in reference, heading
    table = rows(reference)
    assert "| required |" in table["datasets.<name>.source"]
    assert "`tokens`, `examples`" in table["sft.loss_averaging"] and "| `tokens` |" in table["sft.loss_averaging"]
    assert "| `{}` |" in table["sft.task_weights"] and "integer: ≥ 1" in table["sft.task_weights"]
    assert "| `null` |" in table["preset"]
    for section in schema["properties"]:
        assert f"`{section}`" in table[section]


def test_the_reference_follows_the_schema_it_is_given(schema):
    changed = copy.deepcopy(schema)
    changed["properties"]["sft"]["properties"]["max_steps"]["description"] = "A new | description with <tags>."
    changed["properties"]["sft"]["properties"]["max_steps"]["default"] = 123
    row = rows(render_reference(changed))["sft.max_steps"]
    assert row.endswith("| `123` | A new \\| description with &lt;tags>. |"), row


def test_check_fails_when_stale_and_write_fixes_it(tmp_path, capsys):
    out = tmp_path / "README.md"
    assert main(["--schema", str(SCHEMA), "--out", str(out), "--check"]) == 1
    out.write_text("stale\n")
    assert main(["--schema", str(SCHEMA), "--out", str(out), "--check"]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert main(["--schema", str(SCHEMA), "--out", str(out)]) == 0
    assert main(["--schema", str(SCHEMA), "--out", str(out), "--check"]) == 0
    assert out.read_text() == render_reference(load_schema(SCHEMA))
