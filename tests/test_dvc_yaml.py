"""dvc.yaml lists, for every stage, its script and every regl module the script imports (transitively), so a
code change reruns the stages it affects; and nothing it lists is stale."""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def regl_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("regl"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("regl"))
    return {n for n in names if module_file(n)}


def closure(script: Path) -> set[Path]:
    """Every regl source file a stage script reaches through imports, package __init__ files included."""
    seen, todo = set(), list(regl_imports(script))
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            f = module_file(".".join(parts[:i]))
            if f and f not in seen:
                seen.add(f)
                todo.extend(regl_imports(f))
    return seen


def docstring_only(path: Path) -> bool:
    """A package __init__ with nothing but a docstring cannot change a stage's result."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def stages():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in spec.items():
        body = stage.get("do", stage)
        yield name, body["cmd"], [d for d in body.get("deps", [])]


@pytest.mark.parametrize("name,cmd,deps", list(stages()), ids=[s[0] for s in stages()])
def test_stage_deps_cover_its_code(name, cmd, deps):
    script = REPO / cmd.split()[1]
    assert cmd.split()[1] in deps, f"{name} does not list its own script"
    listed = {REPO / d for d in deps}

    def covered(f: Path) -> bool:
        return any(f == d or d in f.parents for d in listed)

    missing = sorted(str(f.relative_to(REPO)) for f in closure(script) if not covered(f) and not docstring_only(f))
    assert not missing, f"stage {name} imports but does not list: {missing}"
    reached = closure(script)
    for d in deps:
        path = REPO / d.replace("${item}", "0")
        if d.startswith(("src/", "stages/")):
            assert path.exists(), f"stage {name} lists {d}, which does not exist"
        if d.startswith("src/"):  # a stale module dep reruns the stage for nothing
            assert any(f == path or path in f.parents for f in reached), f"stage {name} lists {d}, never imported"
