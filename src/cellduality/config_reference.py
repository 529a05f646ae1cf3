"""The configuration reference, ``config/README.md``, generated from ``config/schema.yaml``.

Every section and key of the schema (nested sections, the dataset-catalog entry and per-key mappings too) with
its type, default and description, so the reference cannot drift from the schema: edit a description in the
schema, then regenerate::

    python -m cellduality.config_reference            # writes config/README.md
    python -m cellduality.config_reference --check    # exit 1 when config/README.md is stale

``tests/test_config_reference.py`` runs the check against the live schema.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from cellduality.config import load_schema
from cellduality.io import atomic_path

_CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root of a source checkout
DEFAULT_SCHEMA = Path("config/schema.yaml")
DEFAULT_OUT = Path("config/README.md")
REGENERATE = "python -m cellduality.config_reference"

# how an entry of a mapping section is called in a dotted key (``datasets.<name>.source``); others get <key>
ENTRY_NAMES = {"datasets": "<name>", "filtering.per_task": "<task>", "datasets.<name>.obs_recode": "<column>"}


def _resolve(node: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """``node`` with a local ``$ref`` (``#/definitions/dataset``) replaced by what it points at."""
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        target: Any = schema
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def _is_section(node: Mapping[str, Any]) -> bool:
    return isinstance(node.get("properties"), Mapping)


def _entry_schema(node: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema of each entry of a mapping whose entries are sections of their own (``datasets``), else None."""
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping) and not _is_section(node):
        extra = _resolve(extra, schema)
        if _is_section(extra):
            return extra
    return None


def _entry_path(path: str) -> str:
    return f"{path}.{ENTRY_NAMES.get(path, '<key>')}"


def _walk(path: str, node: Mapping[str, Any], schema: Mapping[str, Any],
          about: str = "") -> Iterator[tuple[str, Mapping, str]]:
    """``(dotted path, section node, what it is)`` for ``node`` and every section below it, depth first in schema
    order; a mapping's entry (``datasets.<name>``) is a section of its own, described by its mapping."""
    node = _resolve(node, schema)
    if _is_section(node):
        yield path, node, node.get("description", about)
        for key, child in node["properties"].items():
            yield from _walk(f"{path}.{key}" if path else key, child, schema)
    entry = _entry_schema(node, schema)
    if entry is not None:
        about = f"One entry of `{path}`. " + node.get("description", "")
        yield from _walk(_entry_path(path), entry, schema, about.strip())


def schema_keys(schema: Mapping[str, Any]) -> list[str]:
    """Every dotted key of the schema (``sft.loss_averaging``, ``datasets.<name>.obs_table.source``, ...)."""
    keys = []
    for path, node, _ in _walk("", schema, schema):
        keys += [f"{path}.{key}" if path else key for key in node["properties"]]
    return keys


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _inline(value: Any) -> str:
    """A value as it would be written in a YAML config (flow style), for a table cell."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10**6).strip()
    text = text.removesuffix("\n...").strip()
    return "`" + _cell(text) + "`"


def _text(text: str) -> str:
    """Schema prose made safe for one Markdown table cell (no HTML tags, emphasis or column breaks by accident);
    `code spans` are kept as they are."""
    parts = " ".join(str(text).split()).split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        part = parts[i].replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")
        parts[i] = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", part)
    for i in range(1, len(parts), 2):
        parts[i] = _cell(parts[i])
    return "`".join(parts)


_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))


def type_text(node: Mapping[str, Any], schema: Mapping[str, Any]) -> str:
    """A key's type in words: ``integer ≥ 1``, ``string: `tokens`, `examples```, ``list of string``, ..."""
    node = _resolve(node, schema)
    if "const" in node:
        return _inline(node["const"])
    for combinator in ("anyOf", "oneOf"):
        if combinator in node:
            return " or ".join(type_text(sub, schema) for sub in node[combinator])
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if not types and "enum" in node:
        types = ["value"]
    words = []
    for kind in types:
        if kind == "array" and isinstance(node.get("items"), Mapping):
            words.append(f"list of {type_text(node['items'], schema)}")
        elif kind == "object" and isinstance(node.get("additionalProperties"), Mapping):
            words.append(_mapping_text(node, schema))
        else:
            words.append(kind)
    text = " or ".join(words) or "any"
    details = [f"{sign} {node[key]}" for key, sign in _BOUNDS if key in node]
    if "enum" in node:
        details.append(", ".join(_inline(value) for value in node["enum"]))
    if "pattern" in node:
        details.append(f"matching {_inline(node['pattern'])}")
    if node.get("uniqueItems"):
        details.append("no repeats")
    return f"{text}: {'; '.join(details)}" if details else text


def _mapping_text(node: Mapping[str, Any], schema: Mapping[str, Any], path: str | None = None) -> str:
    names = node.get("propertyNames", {})
    if "enum" in names:
        keys = "key in " + ", ".join(_inline(value) for value in names["enum"])
    elif "pattern" in names:
        keys = f"key matching {_inline(names['pattern'])}"
    else:
        keys = "key"
    entry = _entry_schema(node, schema)
    if entry is not None and path is not None:
        return f"mapping: {keys} → entry (see {_link(_entry_path(path))})"
    if entry is not None:
        return f"mapping: {keys} → entry"
    return f"mapping: {keys} → {type_text(node['additionalProperties'], schema)}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _heading(path: str) -> str:
    return f"`{path}`"


def _link(path: str) -> str:
    return f"[`{path}`](#{_anchor(_heading(path))})"


def _row(path: str, key: str, node: Mapping[str, Any], schema: Mapping[str, Any], required: bool) -> str:
    dotted = f"{path}.{key}" if path else key
    node = _resolve(node, schema)
    if _is_section(node):
        kind = f"section (see {_link(dotted)})"
    elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), Mapping):
        kind = _mapping_text(node, schema, dotted)
    else:
        kind = type_text(node, schema)
    default = _inline(node["default"]) if "default" in node else ("required" if required else "–")
    description = _text(node.get("description", ""))
    return f"| `{dotted}` | {kind} | {default} | {description} |"


def _table(path: str, node: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    required = set(node.get("required", []))
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    rows += [_row(path, key, child, schema, key in required) for key, child in node["properties"].items()]
    return rows


def render_reference(schema: Mapping[str, Any]) -> str:
    """``config/README.md`` for ``schema`` (the parsed ``config/schema.yaml``): a header, the top-level keys,
    then one table per section, nested section and mapping entry, every key with its type, default and
    description."""
    sections = list(_walk("", schema, schema))[1:]
    paths = {path for path, _, _ in sections}

    def nested(path: str) -> bool:  # below another section (model.embedded), not a section of its own (sft)
        parts = path.split(".")
        return any(".".join(parts[:i]) in paths for i in range(1, len(parts)))

    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from config/schema.yaml by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Generated from [`schema.yaml`](schema.yaml), the one place where every key's default and description are",
        f"written; do not edit this file by hand. After changing the schema, regenerate it with `{REGENERATE}`",
        "(from the repository root); `tests/test_config_reference.py` fails while it is stale.",
        "",
        _text(schema.get("description", "")),
        "",
        "A config sets only what differs from these defaults: start from a preset (`preset: demo`, laptop scale, or",
        "`preset: paper`) and override keys. Keys are written as dotted paths here (`sft.max_steps` is `max_steps`",
        "under `sft:`), as errors name them. `<name>` stands for a name you choose (a dataset, a task, a column).",
        "",
        "Sections: " + ", ".join(_link(path) for path, _, _ in sections if not nested(path)) + ".",
        "",
        "## Top-level keys",
        "",
        *_table("", schema, schema),
    ]
    for path, node, about in sections:
        lines += ["", f"{'###' if nested(path) else '##'} {_heading(path)}", ""]
        if about:
            lines += [_text(about), ""]
        lines += _table(path, node, schema)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description="Write (or check) the configuration reference "
                                     "config/README.md generated from config/schema.yaml.")
    parser.add_argument("--schema", type=Path, default=None, help=f"schema to read (default {DEFAULT_SCHEMA})")
    parser.add_argument("--out", type=Path, default=None, help=f"reference to write or check (default {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    root = _CHECKOUT if (_CHECKOUT / DEFAULT_SCHEMA).is_file() else Path.cwd()
    schema_path = args.schema or root / DEFAULT_SCHEMA
    out = args.out or root / DEFAULT_OUT
    if not schema_path.is_file():
        print(f"cellduality error: {schema_path} not found; run from the repository root or pass --schema",
              file=sys.stderr)
        return 2
    text = render_reference(load_schema(schema_path))
    current = out.read_text() if out.is_file() else None
    if args.check:
        if current != text:
            print(f"{out} is out of date with {schema_path}; regenerate it with `{REGENERATE}`", file=sys.stderr)
            return 1
        print(f"{out} is up to date")
        return 0
    if current != text:
        with atomic_path(out) as tmp:
            tmp.write_text(text)
    print(f"wrote {out}" if current != text else f"{out} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
