"""The library's shape (docs/architecture.md): no import cycle anywhere in src/ (lazy imports inside functions
count too), no pipeline path in the library, and each pipeline path written once: in dvc.yaml's `vars: paths`,
which the stages' deps and outs and the stage scripts' defaults both use."""

import ast
import re
from pathlib import Path

import yaml

from test_dvc_yaml import REPO, SRC, module_file, regl_imports

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


# --- each pipeline path written once ---------------------------------------------------------------------------
# a path into one of the pipeline's folders, not a module path such as src/regl/data/shards.py
PIPELINE_PATH = re.compile(r"(?<![\w/.$])(?:data|models|metrics|plots)/")


def yaml_strings(node) -> list[str]:
    """Every string in a loaded YAML document, keys included."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in yaml_strings(k) + yaml_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in yaml_strings(v)]
    return [node] if isinstance(node, str) else []


def declared_paths(spec: dict) -> dict[str, str]:
    """dvc.yaml's `vars: paths` block, as {"data.clients": "data/clients", ...}."""
    block = next((v["paths"] for v in spec.get("vars", []) if isinstance(v, dict) and "paths" in v), {})
    return {f"{group}.{name}": path for group, names in block.items() for name, path in names.items()}


def test_each_pipeline_path_is_written_once():
    """Only dvc.yaml's `vars: paths` names a file of the pipeline; the stages (deps, outs, metrics, plots) use
    ${paths...}, the stage scripts and the Flower App regl.core.stage.pipeline_paths. Docstrings may mention
    paths."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    declared = list(declared_paths(spec).values())
    found = [f"dvc.yaml vars: {p!r} is declared twice" for p in sorted(set(declared)) if declared.count(p) > 1]
    found += [f"dvc.yaml stages: {s!r}" for s in yaml_strings(spec["stages"]) if PIPELINE_PATH.search(s)]
    found += [f"params.yaml: {s!r}" for s in yaml_strings(yaml.safe_load((REPO / "params.yaml").read_text()))
              if PIPELINE_PATH.search(s)]
    for path in [*sorted((REPO / "stages").glob("*.py")), *sorted((REPO / "flower").glob("*.py")),
                 *sorted(SRC.rglob("*.py"))]:
        found += [f"{path.relative_to(REPO)}:{line}: {text!r}" for line, text in string_literals(path)
                  if PIPELINE_PATH.search(text)]
    assert not found, "a pipeline path written outside dvc.yaml's vars: paths:\n" + "\n".join(found)


def paths_used(tree: ast.AST, names: tuple[str, ...]) -> set[str]:
    """``group.name`` of every ``PATHS.group.name`` (``names``: the variables holding pipeline_paths)."""
    return {f"{node.value.attr}.{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name) and node.value.value.id in names}


def script_paths(script: Path) -> set[str]:
    """The pipeline paths a stage script defaults to: its own PATHS.x.y, and the library's StageFiles.of where it
    takes its files from there (federated_train, shared with the Flower App)."""
    tree = ast.parse(script.read_text())
    used = paths_used(tree, ("PATHS",))
    if "StageFiles.of" in script.read_text():
        used |= paths_used(ast.parse((SRC / "regl/federated/train.py").read_text()), ("paths",))
    return used


def test_each_stage_script_uses_the_paths_its_stage_declares():
    """A file a script reads or writes by default is a dep or an out of its stage, and the other way round."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert PIPELINE_PATH.search("data/clients") and not PIPELINE_PATH.search("src/regl/data/shards.py")
    for name, entry in spec["stages"].items():
        body = entry.get("do", entry)
        files = [s for key in ("deps", "outs", "metrics", "plots") for s in yaml_strings(body.get(key, []))]
        listed = {m for s in files for m in re.findall(r"\$\{paths\.(\w+\.\w+)\}", s)}
        used = script_paths(REPO / body["cmd"].split()[1])
        assert used == listed, f"stage {name}: script uses {sorted(used - listed)} not in dvc.yaml; dvc.yaml " \
                               f"lists {sorted(listed - used)} the script does not use"
        assert listed <= set(declared_paths(spec))


def test_no_stage_script_is_loaded_by_file_path_from_the_library_or_the_flower_app():
    """The Flower App and the library import library functions; the stage scripts are entry points only."""
    found = [f"{path.relative_to(REPO)}:{line}: {text!r}"
             for path in [*sorted(SRC.rglob("*.py")), *sorted((REPO / "flower").glob("*.py"))]
             for line, text in string_literals(path)
             if "stages/" in text or (text.endswith(".py") and (REPO / "stages" / text).is_file())]
    found += [f"{path.relative_to(REPO)}: loads a module by file path"
              for path in [*sorted(SRC.rglob("*.py")), *sorted((REPO / "flower").glob("*.py"))]
              if "spec_from_file_location" in path.read_text()]
    assert not found, "\n".join(found)
