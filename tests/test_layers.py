"""The import contract of the installed package: layers point one way, and no package imports
itself back through another (read from the source with ``ast``: imports inside functions count).

    config, io, storage, miniature (assets)       bottom
    retrieval
    engine | patches (neither names the other: the engine never names a family)
    model (the facade: ReKV, from_pretrained)
    integrations, commands, tasks                 top
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {"lmms_rekv": "lmms_rekv", "lmms_rekv.patches": "patches", "lmms_rekv.tasks": "tasks"}
LAYERS = [
    {"lmms_rekv.config", "lmms_rekv.io", "lmms_rekv.storage", "lmms_rekv.miniature"},
    {"lmms_rekv.retrieval"},
    {"lmms_rekv.engine", "lmms_rekv.patches"},
    {"lmms_rekv.model"},
    {"lmms_rekv.integrations", "lmms_rekv.commands", "lmms_rekv.tasks"},
]
INDEPENDENT = [("lmms_rekv.engine", "lmms_rekv.patches")]


def _modules():
    """``{module name: source path}`` of the package (patches and tasks under their installed names)."""
    found = {}
    for package, folder in FOLDERS.items():
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not (package == "lmms_rekv" and d in ("patches", "tasks"))]
            rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
            base = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for name in files:
                if name.endswith(".py"):
                    found[base if name == "__init__.py" else f"{base}.{name[:-3]}"] = os.path.join(dirpath, name)
    return found


def _imports(module: str, path: str):
    """Every ``lmms_rekv`` module ``module`` imports (absolute or relative, anywhere in the file)."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out.update(n for n in names if n.startswith("lmms_rekv"))
    return out


def _unit(module: str) -> str:
    """The contract unit a module belongs to (``lmms_rekv.engine.session`` -> ``lmms_rekv.engine``)."""
    for layer in LAYERS:
        for unit in sorted(layer, key=len, reverse=True):
            if module == unit or module.startswith(unit + "."):
                return unit
    return module  # lmms_rekv itself (lazy exports) and lmms_rekv.<name> submodule attributes


def _edges():
    modules = _modules()
    edges = defaultdict(set)
    for module, path in modules.items():
        for target in _imports(module, path):
            if target in modules or any(m.startswith(target + ".") for m in modules):
                edges[_unit(module)].add(_unit(target))
    return edges


def _layer(unit: str):
    return next((i for i, layer in enumerate(LAYERS) if unit in layer), None)


def test_every_module_has_a_layer():
    units = {_unit(m) for m in _modules()} - {"lmms_rekv"}
    assert {u for u in units if _layer(u) is None} == set()


def test_layers_point_one_way():
    upward = [(a, b) for a, targets in _edges().items() for b in targets
              if a != "lmms_rekv" and b != "lmms_rekv" and _layer(b) is not None and _layer(a) < _layer(b)]
    assert upward == [], "imports that run upward"
    sideways = [(a, b) for a, b in INDEPENDENT for x, y in ((a, b), (b, a)) if y in _edges().get(x, set())]
    assert sideways == []


def test_no_import_circle_between_units():
    edges = _edges()
    seen, stack, circles = set(), [], []

    def visit(unit):
        if unit in stack:
            circles.append(stack[stack.index(unit):] + [unit])
            return
        if unit in seen:
            return
        seen.add(unit)
        stack.append(unit)
        for target in edges.get(unit, ()):
            if target != unit and target != "lmms_rekv":
                visit(target)
        stack.pop()

    for unit in list(edges):
        visit(unit)
    assert circles == []


def test_the_contract_sees_a_violation(tmp_path, monkeypatch):
    """The checker itself: an upward import planted in a copy of a bottom module is reported."""
    modules = _modules()
    planted = tmp_path / "video.py"
    planted.write_text(open(modules["lmms_rekv.io.video"]).read() + "\n\ndef _x():\n    from ..model import ReKV\n")
    monkeypatch.setitem(globals(), "_modules", lambda: {**modules, "lmms_rekv.io.video": str(planted)})
    assert "lmms_rekv.model" in _edges()["lmms_rekv.io"]
