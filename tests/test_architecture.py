"""The library's shape (docs/architecture.md): no import cycle anywhere in src/ (lazy imports inside functions
count too), and no pipeline path in the library: the stage scripts own their files."""

import ast
from pathlib import Path

from test_dvc_yaml import SRC, module_file, regl_imports

PIPELINE_DIRS = ("data/", "models/", "metrics/", "plots/")


def modules() -> dict[str, Path]:
    return {".".join(f.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): f
            for f in SRC.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in modules().items():
        targets = set()
        for imported in regl_imports(path):
            f = module_file(imported)
            targets.add(".".join(f.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"))
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_src():
    graph = import_graph()
    assert "regl.federated.flower_engine" in graph and graph["regl.federated.flower_engine"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def string_literals(path: Path) -> list[tuple[int, str]]:
    """String constants that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_pipeline_path_in_the_library():
    found = [f"{path.relative_to(SRC)}:{line}: {text!r}" for path in SRC.rglob("*.py")
             for line, text in string_literals(path) if any(d in text for d in PIPELINE_DIRS)]
    assert not found, "pipeline paths belong in the stage scripts (and dvc.yaml):\n" + "\n".join(found)
