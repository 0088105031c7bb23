"""The package's layering: every module imports on its own, and no two modules import
each other, not even through an import inside a function.

A function-level import hides a cycle from Python (`assets` imported the Inception
converter on use while `metrics.inception` imported `assets`), but the layers still
depend on each other both ways, so the cycle check reads every import statement.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "gantransfer_jax"

# Clears the package from sys.modules before each import, so each module starts from an
# empty package (jax, flax and numpy stay loaded: re-importing them would cost minutes).
_IMPORT_EACH_ALONE = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
  for loaded in [m for m in sys.modules if m == "gantransfer_jax" or m.startswith("gantransfer_jax.")]:
    del sys.modules[loaded]
  try:
    importlib.import_module(name)
  except BaseException:  # A SystemExit or KeyboardInterrupt at import is a failure too.
    failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = path.relative_to(root).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: pathlib.Path = REPO) -> dict[str, pathlib.Path]:
  """Every module of the package under `root` (packages by their `__init__`), but
  `__main__`s, which run their command when imported."""
  return {_module_name(path, root): path for path in sorted((root / PACKAGE).rglob("*.py"))
          if path.name != "__main__.py"}


def import_graph(root: pathlib.Path = REPO) -> dict[str, set[str]]:
  """Module -> the package's modules it imports anywhere (top level or in a function)."""
  modules = package_modules(root)
  graph = {}
  for own, path in modules.items():
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
      if isinstance(node, ast.Import):
        found.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # Relative: `from . import x` inside `package`.
          anchor = package.rsplit(".", node.level - 1)[0]
          base = f"{anchor}.{base}" if base else anchor
        # `from a import b` imports the module a.b when there is one, else a name of a.
        found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names)
    graph[own] = {name for name in found if name in modules and name != own}
  return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan), each sorted."""
  index, lowlink, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(node: str) -> None:
    index[node] = lowlink[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for successor in sorted(graph[node]):
      if successor not in index:
        visit(successor)
        lowlink[node] = min(lowlink[node], lowlink[successor])
      elif successor in on_stack:
        lowlink[node] = min(lowlink[node], index[successor])
    if lowlink[node] == index[node]:
      component = []
      while not component or component[-1] != node:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        cycles.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return sorted(cycles)


def test_import_cycles_finds_a_cycle_closed_inside_a_function(tmp_path):
  # The shape of the old assets <-> inception circle, in a throwaway copy of the package.
  root = tmp_path / PACKAGE
  (root / "sub").mkdir(parents=True)
  (root / "__init__.py").write_text("")
  (root / "sub" / "__init__.py").write_text("from . import network\n")
  (root / "catalogue.py").write_text("def fetch():\n  from gantransfer_jax.sub import network\n")
  (root / "sub" / "network.py").write_text("from gantransfer_jax import catalogue\n")
  (root / "leaf.py").write_text("import gantransfer_jax.sub.network\n")
  assert import_graph(tmp_path)["gantransfer_jax.sub"] == {"gantransfer_jax.sub.network"}
  assert import_cycles(import_graph(tmp_path)) == [
      ["gantransfer_jax.catalogue", "gantransfer_jax.sub.network"]]


def test_no_module_imports_one_that_imports_it_back():
  graph = import_graph()
  assert sum(len(edges) for edges in graph.values()) > len(graph)  # The parse saw imports.
  assert import_cycles(graph) == []


def test_every_module_imports_alone():
  names = sorted(package_modules())
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", _IMPORT_EACH_ALONE, json.dumps(names)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                          check=True)
  failures = json.loads(result.stdout.strip().splitlines()[-1])
  assert not failures, "\n".join(f"{name}:\n{trace}" for name, trace in failures.items())
