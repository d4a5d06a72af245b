"""The import contract of the installed package: layers point one way, and no package imports
itself back through another (read from the source with ``ast``: imports inside functions count).

    config, args, registry, settings, layout, io, storage, miniature (assets)   bottom
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
    {"lmms_rekv.config", "lmms_rekv.args", "lmms_rekv.registry", "lmms_rekv.settings", "lmms_rekv.layout", "lmms_rekv.io", "lmms_rekv.storage", "lmms_rekv.miniature"},
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


#: private names of upstream libraries the family adapters must use (transformers has no public
#: way to register an attention function for one model or to read which one it runs)
UPSTREAM_PRIVATE = {"_attn_implementation", "_global_mapping"}


def _foreign_private(path: str):
    """``(line, expression)`` of every ``obj._name`` in ``path`` where ``obj`` is not ``self``/``cls``
    and ``_name`` is not defined in that file (a method, an attribute set on ``self``, a module
    name): one part reaching into another's underscore names."""
    tree = ast.parse(open(path).read())
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    own |= {t.attr for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) for t in ast.walk(t)
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    own |= {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) for t in ast.walk(n) if isinstance(t, ast.Name)}
    return [(n.lineno, ast.unparse(n)) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
            and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))
            and n.attr not in own and n.attr not in UPSTREAM_PRIVATE]


def test_no_part_calls_another_parts_underscore_names():
    """Parts talk through public interfaces: no module of the package reads or calls an
    underscore name that another module defines (the session's writer, feeder and answerer,
    the lmms-eval adapter and its runner, ...)."""
    found = {path: hits for path in _modules().values() if (hits := _foreign_private(path))}
    assert found == {}


def test_the_private_name_check_sees_a_violation(tmp_path):
    planted = tmp_path / "answering.py"
    planted.write_text("def ask(session):\n    return session.writer._pending\n")
    assert _foreign_private(str(planted)) == [(2, "session.writer._pending")]


#: the repository's top-level parts, bottom to top: the package (with patches and tasks), the
#: research code (tiny models, the miniature, studies), the benchmarks, the tests' helpers
REPOSITORY = ["lmms_rekv", "research", "benchmarks", "tests"]


def _repository_modules():
    """``{module: path}`` of research/, benchmarks/ and the tests' helper modules (not test files)."""
    found = {}
    for top in ("research", "benchmarks", "tests"):
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__",) and not d.startswith(".")]
            rel = os.path.relpath(dirpath, ROOT).replace(os.sep, ".")
            for name in files:
                if name.endswith(".py") and not (top == "tests" and (name.startswith("test_") or name == "conftest.py")):
                    found[rel if name == "__init__.py" else f"{rel}.{name[:-3]}"] = os.path.join(dirpath, name)
    return found


def _top_imports(path: str):
    """The repository parts a file imports (``lmms_rekv``, ``research``, ``benchmarks``, or a tests
    helper imported by its bare name, as the tests do)."""
    helpers = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(ROOT, "tests"))} | {"extensions"}
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            head = name.split(".")[0]
            out.add("tests" if head in helpers and head not in REPOSITORY else head)
    return out & set(REPOSITORY)


def test_the_repository_points_one_way():
    """The package never imports research, benchmarks or the tests; research never imports the
    benchmarks or the tests; the benchmarks never import the tests."""
    parts = {**{m: p for m, p in _modules().items()}, **_repository_modules()}
    upward = []
    for module, path in parts.items():
        mine = REPOSITORY.index(module.split(".")[0]) if module.split(".")[0] in REPOSITORY else 0
        upward += [(module, target) for target in _top_imports(path) if REPOSITORY.index(target) > mine]
    assert upward == []


def test_the_repository_check_sees_a_violation(tmp_path):
    planted = tmp_path / "soak.py"
    planted.write_text("def frames():\n    from benchmarks.bench import synthetic_frames\n")
    assert _top_imports(str(planted)) == {"benchmarks"}  # in research/, one part up
