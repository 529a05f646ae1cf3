"""The house rules of the library's layout (docs/architecture.md): imports only go down the pipeline
(ground floor <- data <- tasks <- teacher | training <- evaluation <- report <- entry points), teacher and
training never import each other, only report imports evaluation, and no module import loop."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cellduality"
GROUND = {"errors", "io", "seeding", "config", "config_reference", "provenance"}
LEVEL = {**dict.fromkeys(GROUND, 0), "data": 1, "tasks": 2, "teacher": 3, "training": 3, "evaluation": 4,
         "report": 5, "snakemake_script": 6, "doctor": 6, "cli": 7}
STAGES = ("data", "tasks", "teacher", "training", "evaluation", "report")


def module_imports() -> dict[str, set[str]]:
    """``{module: {imported cellduality modules}}`` (dotted, without the ``cellduality.`` prefix)."""
    modules = {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix("__init__").rstrip("."): p
               for p in PACKAGE.rglob("*.py") if "resources" not in p.relative_to(PACKAGE).parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cellduality":
                base = node.module.removeprefix("cellduality").lstrip(".")
                for alias in node.names:  # `from cellduality.tasks import prompts` imports a module
                    sub = f"{base}.{alias.name}".lstrip(".")
                    targets.add(sub if sub in modules else base)
            elif isinstance(node, ast.Import):
                targets |= {a.name.removeprefix("cellduality.") for a in node.names if a.name.startswith("cellduality.")}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def top(module: str) -> str:
    return module.split(".")[0]


def test_every_module_belongs_to_a_stage_or_the_ground_floor():
    assert {top(m) for m in module_imports() if m} <= set(LEVEL) | {""}


def test_imports_only_go_down_the_pipeline():
    upward = []
    for module, targets in module_imports().items():
        if not module:
            continue
        for target in targets:
            src, dst = top(module), top(target)
            if src == dst:
                continue
            if LEVEL[dst] > LEVEL[src] or {src, dst} == {"teacher", "training"}:
                upward.append(f"{module} -> {target}")
            if dst == "evaluation" and src not in ("report", "cli"):
                upward.append(f"{module} -> {target} (only report imports evaluation)")
    assert not upward, upward


def test_no_import_loop():
    graph = module_imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import loop: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_stage_packages_exist_with_a_contract_docstring():
    for stage in STAGES:
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file(), stage
        assert ast.get_docstring(ast.parse(init.read_text())), f"{stage}/__init__.py needs a docstring"


def test_stage_docstrings_say_what_they_import():
    """Each stage's ``__init__`` docstring has an ``Imports:`` line naming exactly the stages it imports."""
    import importlib
    import re

    graph = module_imports()
    for stage in STAGES:
        doc = importlib.import_module(f"cellduality.{stage}").__doc__ or ""
        claim = re.search(r"Imports: (.*?)[;.]", " ".join(doc.split()))
        assert claim, f"cellduality.{stage}: no 'Imports:' line in its docstring"
        said = {name for name in STAGES + ("ground floor",) if name in claim.group(1)}
        actual = {"ground floor" if top(t) in GROUND else top(t)
                  for m, targets in graph.items() if m and top(m) == stage for t in targets} - {stage}
        assert said == actual, f"cellduality.{stage} says it imports {sorted(said)}, imports {sorted(actual)}"
