"""No import cycle between the first-level packages of jaxalign and native_eos_bindings.

Every module is parsed with ``ast`` (imports inside functions count too); each import becomes an
edge between first-level nodes (``jaxalign.data``, ``jaxalign.morphable``, ``jaxalign.io``, ...,
``native_eos_bindings``). The graph must be acyclic, and the layers the completion stage relies
on are pinned: ``native_eos_bindings`` is a leaf below ``jaxalign.morphable`` (it imports only
``jaxalign.assets``), ``jaxalign.assets`` imports nothing of jaxalign, and ``jaxalign.morphable``
imports neither ``jaxalign.data`` nor the training / evaluation side.
"""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
ROOTS = ('jaxalign', 'native_eos_bindings')

# Edges that close a cycle today, in files the lead developer is refactoring (issue 12); remove
# an entry once its edge is gone (the test fails on entries that no longer exist, so the list
# only shrinks).
KNOWN_CYCLE_EDGES = set()


def _node(module: str) -> str:
  """First-level node of a dotted module name ('jaxalign.data.records' -> 'jaxalign.data')."""
  parts = module.split('.')
  if parts[0] == 'jaxalign' and len(parts) > 1:
    return '.'.join(parts[:2])
  return parts[0]


def _module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(REPO).with_suffix('')
  parts = list(rel.parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _is_module(dotted: str) -> bool:
  p = REPO.joinpath(*dotted.split('.'))
  return p.with_suffix('.py').is_file() or (p / '__init__.py').is_file()


def import_edges():
  """{(source node, target node): [file:line, ...]} over every module of the two trees."""
  edges = {}
  files = [p for root in ROOTS for p in sorted((REPO / root).rglob('*.py'))]
  assert len(files) > 50, files        # the whole jaxalign tree, not a part of it
  for path in files:
    name = _module_name(path)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    src = _node(name)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          up = package.split('.')[:len(package.split('.')) - node.level + 1]
          base = '.'.join(up + ([base] if base else []))
        for a in node.names:
          full = f'{base}.{a.name}'
          targets.append(full if _is_module(full) else base)
      for t in targets:
        if t.split('.')[0] not in ROOTS:
          continue
        dst = _node(t)
        if dst != src and dst != 'jaxalign':
          edges.setdefault((src, dst), []).append(f'{path.relative_to(REPO)}:{node.lineno}')
  return edges


def _cycles(edges):
  """Strongly connected components with more than one node (Tarjan)."""
  graph = {}
  for a, b in edges:
    graph.setdefault(a, set()).add(b)
    graph.setdefault(b, set())
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_first_level_packages_are_acyclic():
  edges = import_edges()
  stale = KNOWN_CYCLE_EDGES - set(edges)
  assert not stale, f'known edges no longer exist, drop them from the list: {sorted(stale)}'
  kept = {e: w for e, w in edges.items() if e not in KNOWN_CYCLE_EDGES}
  cycles = _cycles(kept)
  detail = {tuple(c): {f'{a} -> {b}': w for (a, b), w in kept.items() if a in c and b in c}
            for c in cycles}
  assert not cycles, f'import cycles between first-level packages: {detail}'


def test_completion_layers():
  edges = import_edges()
  out_of = lambda src: {b: w for (a, b), w in edges.items() if a == src}
  assert set(out_of('native_eos_bindings')) <= {'jaxalign.assets'}, out_of('native_eos_bindings')
  assert not out_of('jaxalign.assets'), out_of('jaxalign.assets')
  bad = {'jaxalign.data', 'jaxalign.training', 'jaxalign.evaluation', 'jaxalign.prediction',
         'jaxalign.models', 'jaxalign.inference'}
  morph = out_of('jaxalign.morphable')
  assert not bad & set(morph), {b: morph[b] for b in bad & set(morph)}
  # The fitter is reached in one place only (the backend table of completion.py).
  fitter_imports = [w for (a, b), ws in edges.items() if a == 'jaxalign.morphable'
                    and b == 'native_eos_bindings' for w in ws]
  assert all('completion.py' in w or 'model.py' in w for w in fitter_imports), fitter_imports


def test_edges_see_imports_inside_functions():
  edges = import_edges()
  # complete.py imports the morphable package inside a function only.
  assert ('jaxalign.complete', 'jaxalign.morphable') in edges
