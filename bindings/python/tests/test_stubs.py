"""The type stubs (fencelock.pyi) name exactly what the native module exports."""

import ast
import pathlib

import fencelock

STUBS = pathlib.Path(__file__).resolve().parent.parent / "fencelock.pyi"


def stub_classes():
    tree = ast.parse(STUBS.read_text())
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return classes


def test_every_export_has_a_stub_and_every_stub_an_export():
    exported = {name for name in dir(fencelock) if not name.startswith("_") and isinstance(getattr(fencelock, name), type)}
    assert exported == set(stub_classes()), "fencelock.pyi is out of date"


def test_every_method_has_a_stub():
    for name, methods in stub_classes().items():
        cls = getattr(fencelock, name)
        if issubclass(cls, Exception):
            continue
        native = {m for m in dir(cls) if not m.startswith("_")} | ({m for m in dir(cls) if m in ("__enter__", "__exit__", "__aenter__", "__aexit__")})
        stubbed = methods - {"__init__"}
        assert native == stubbed, f"{name}: native {sorted(native)} vs stubs {sorted(stubbed)}"
