"""Which library code a workflow step runs, as a content digest (a Snakemake rerun trigger).

A step's code is its entry (a rule script under ``workflow/scripts/`` or a library module such as
``cellduality.training.sft``) plus every ``cellduality`` module it imports, followed transitively through the
import statements of each module (module-level and inside functions alike, so the set is a safe superset),
with the ``__init__`` of every package on the way. :func:`code_digest` hashes the paths and contents of those
files: an edit to a reward function changes the digest of GRPO and evaluation, not of the download; a
``touch`` or ``git checkout`` that leaves the contents unchanged changes nothing. The rules pass the digest
as a param (``rules/common.smk``), so ``snakemake -n`` reports the change as a params change naming the code.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent  # src/cellduality
PACKAGE = PACKAGE_ROOT.name


def _module_file(module: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """The file of dotted ``module`` (``cellduality.tasks.rewards``), a package's ``__init__.py``, or None."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Dotted ``cellduality`` modules a file imports (``from pkg import name`` counts ``pkg.name`` when that is
    a module of its own, else ``pkg``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == PACKAGE:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if _module_file(f"{node.module}.{alias.name}") is not None)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
    return found


def _with_packages(module: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c`` (importing a module runs each package's ``__init__``)."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@lru_cache(maxsize=256)
def _closure(entries: tuple[str, ...]) -> tuple[Path, ...]:
    files: set[Path] = set()
    todo: list[str] = []
    for entry in entries:
        path = Path(entry)
        if path.suffix == ".py" and path.is_file():  # a script: its own file, then what it imports
            files.add(path.resolve())
            todo.extend(_imports(path))
        else:
            todo.append(entry)
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        for name in _with_packages(module):
            if name in seen:
                continue
            seen.add(name)
            path = _module_file(name)
            if path is not None:
                files.add(path)
                todo.extend(_imports(path))
    return tuple(sorted(files))


def code_files(entries: Iterable[str], shallow: Iterable[str] = ()) -> list[Path]:
    """The files of the entries and of every library module they import, transitively, plus the ``shallow``
    modules' own files without their imports (e.g. ``cellduality.cli``, which imports every step lazily)."""
    files = set(_closure(tuple(sorted(entries))))
    files.update(p for p in (_module_file(m) for m in shallow) if p is not None)
    return sorted(files)


def code_digest(entries: Iterable[str], shallow: Iterable[str] = ()) -> str:
    """``"library code <16 hex digits> (<n> files)"``: SHA-256 over the relative path and content of :func:`code_files`
    (paths relative to the package's parent, so the digest does not depend on where the checkout sits)."""
    files = code_files(entries, shallow)
    digest = hashlib.sha256()
    for path in files:
        try:
            name = path.relative_to(PACKAGE_ROOT.parent)
        except ValueError:  # a script outside the package: its name is enough
            name = Path(path.name)
        digest.update(str(name).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"library code {digest.hexdigest()[:16]} ({len(files)} files)"


AUDIT_FLAGS = ("--dry-run", "--dryrun", "--summary", "--detailed-summary", "-S", "-D", "--dag", "--rulegraph",
               "--filegraph", "--lint", "--list-changes", "--lc", "--list-rules", "-l", "--list-target-rules")


def audit_only(argv: list[str]) -> bool:
    """Whether a Snakemake command line only plans or audits (``-n``, ``--summary``, ``--dag``, ...): checks that
    guard real work (an API key for a paid teacher) then warn instead of failing."""
    for arg in argv[1:]:
        name = arg.split("=", 1)[0]
        if name in AUDIT_FLAGS or (arg.startswith("-") and not arg.startswith("--") and "n" in arg[1:] and
                                   arg[1:].isalpha()):
            return True
    return False
