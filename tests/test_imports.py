"""The package's import graph (read with `ast`, function-level imports included, so a local import
cannot hide a cycle): no cycle, and no module imports from a floor above its own
(docs/DESIGN.md section 12)."""
import ast
import pathlib

import pytest

PACKAGE = "recon3d_jax"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE

# Floors, lowest first, by module or package prefix (the longest matching prefix decides). A
# module may import from its own floor or lower ones.
FLOORS = {
    PACKAGE: 0,  # The package's empty __init__.
    # 1. Pure functions of arrays and plain values, and the JAX-free config helpers.
    f"{PACKAGE}.geometry": 1, f"{PACKAGE}.models": 1, f"{PACKAGE}.losses": 1,
    f"{PACKAGE}.metrics": 1, f"{PACKAGE}.mise": 1, f"{PACKAGE}.weighting": 1,
    f"{PACKAGE}.study.stats": 1, f"{PACKAGE}.sharding": 1, f"{PACKAGE}.writers": 1,
    f"{PACKAGE}.visualize": 1, f"{PACKAGE}.arms": 1, f"{PACKAGE}.config_lib": 1,
    f"{PACKAGE}.packing": 1, f"{PACKAGE}.cli": 1,
    # 2. Data: rendering datasets and loading them.
    f"{PACKAGE}.data": 2,
    # 3. What a config means.
    f"{PACKAGE}.experiment": 3,
    # 4. Training and evaluating a run.
    f"{PACKAGE}.train": 4, f"{PACKAGE}.evaluate": 4, f"{PACKAGE}.cost": 4,
    f"{PACKAGE}.baselines": 4, f"{PACKAGE}.distributed": 4,
    # 5. Entry point and the study over many runs (study/stats, pure, sits on floor 1).
    f"{PACKAGE}.main": 5, f"{PACKAGE}.study": 5,
}


def module_name(path: pathlib.Path, root: pathlib.Path, package: str) -> str:
  parts = (package,) + path.relative_to(root).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
  """The package modules that `name` imports anywhere in its source (functions included)."""
  here = name if is_package else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
        base = f"{anchor}.{base}" if base else anchor
      # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod itself.
      found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                   for a in node.names)
  return {m for m in found if m in modules}


def import_graph(root: pathlib.Path, package: str) -> dict[str, set[str]]:
  """module -> the package modules it imports, for every .py file under root."""
  paths = {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
  return {name: imported_modules(ast.parse(path.read_text()), name, path.name == "__init__.py",
                                 set(paths))
          for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None (depth-first search)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        return stack[stack.index(dep):] + [dep]
      if dep not in state and (cycle := visit(dep)):
        return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def floor_of(module: str, floors: dict[str, int]) -> int:
  prefixes = [p for p in floors if module == p or module.startswith(p + ".")]
  if not prefixes:
    raise KeyError(f"{module} has no floor; add it to FLOORS")
  return floors[max(prefixes, key=len)]


def upward_imports(graph: dict[str, set[str]], floors: dict[str, int]) -> list[str]:
  return [f"{m} (floor {floor_of(m, floors)}) imports {d} (floor {floor_of(d, floors)})"
          for m, deps in sorted(graph.items()) for d in sorted(deps)
          if floor_of(d, floors) > floor_of(m, floors)]


@pytest.fixture(scope="module")
def graph():
  return import_graph(ROOT, PACKAGE)


def test_graph_sees_the_package(graph):
  assert {f"{PACKAGE}.train", f"{PACKAGE}.experiment", f"{PACKAGE}.data.pipeline"} <= set(graph)
  assert f"{PACKAGE}.experiment" in graph[f"{PACKAGE}.train"]


def test_no_import_cycle(graph):
  assert find_cycle(graph) is None


def test_every_module_has_a_floor_and_none_imports_upward(graph):
  assert upward_imports(graph, FLOORS) == []


def test_detects_a_cycle_through_a_local_import(tmp_path):
  pkg = tmp_path / "pkg"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "low.py").write_text("def f():\n  from pkg import high\n  return high\n")
  (pkg / "high.py").write_text("from pkg.low import f\n")
  (pkg / "other.py").write_text("import pkg.low\nfrom . import high\n")
  synthetic = import_graph(pkg, "pkg")
  assert synthetic["pkg.low"] == {"pkg.high"}
  assert synthetic["pkg.other"] == {"pkg.low", "pkg.high"}
  assert find_cycle(synthetic) in (["pkg.high", "pkg.low", "pkg.high"],
                                   ["pkg.low", "pkg.high", "pkg.low"])
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
  assert upward_imports(synthetic, {"pkg": 0, "pkg.low": 1, "pkg.high": 2, "pkg.other": 2}) == [
      "pkg.low (floor 1) imports pkg.high (floor 2)"]
