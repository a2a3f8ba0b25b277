"""The package rules of docs/architecture.md, checked by reading every module's imports.

Imports are read with ``ast`` at any depth (function bodies and ``if TYPE_CHECKING`` blocks included), plus
``importlib.import_module("...")`` and ``__import__("...")`` calls with literal names; relative imports are
resolved against the importing module. A second check imports the library in a fresh interpreter and looks
at ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("echo_model", "echo_eval", "train", "app")

# (importer prefix, forbidden imported prefixes, why)
RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("echo_model", ("echo_eval", "train", "app"), "the library imports nothing built on it"),
    ("echo_model.data", ("echo_model.modeling", "echo_model.sampling", "echo_model.loading",
                         "echo_model.checkpoint", "echo_model.drafting", "echo_model.explain"),
     "data is plain records and text, usable without the model"),
    ("echo_model.imaging", ("echo_model.modeling", "echo_model.sampling", "echo_model.loading",
                            "echo_model.checkpoint", "echo_model.drafting", "echo_model.explain"),
     "image input is usable without the model"),
    ("echo_eval", ("train", "app"), "measuring does not depend on training or the app"),
    ("app", ("echo_eval",), "the app drafts through the library, not the measuring package"),
    ("train", ("app",), "training does not depend on the app"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_names(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, as absolute dotted names with their line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from pkg import sub`` may import a submodule
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
                found.append((node.lineno, node.args[0].value))
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(paths: list[Path]) -> list[str]:
    out = []
    for path in paths:
        me = module_name(path)
        for line, name in imported_names(path):
            for importer, forbidden, why in RULES:
                if _under(me, importer) and any(_under(name, f) for f in forbidden):
                    out.append(f"{path.relative_to(ROOT)}:{line} imports {name} ({importer} must not: {why})")
    return out


def all_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_package_follows_the_import_rules():
    paths = all_modules()
    assert len(paths) > 60, "the walk found too few modules; is ROOT right?"
    assert violations(paths) == []


def test_the_checker_catches_imports_at_any_depth(tmp_path, monkeypatch):
    """A planted violation of each kind is found: top level, in a function, relative, and by literal name."""
    pkg = tmp_path / "echo_model"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "leaky.py").write_text(
        "import echo_eval.metrics\n"
        "def f():\n    from train.items import TrainItem\n"
        "def g():\n    import importlib\n    return importlib.import_module('app.store')\n"
        "def h():\n    return __import__('echo_eval')\n"
    )
    (pkg / "data" / "bad.py").write_text("def f():\n    from ..sampling import build_sampler\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = violations(sorted(tmp_path.rglob("*.py")))
    assert any("leaky.py:1 imports echo_eval.metrics" in v for v in found)
    assert any("leaky.py:3 imports train.items" in v for v in found)
    assert any("leaky.py:6 imports app.store" in v for v in found)
    assert any("leaky.py:8 imports echo_eval" in v for v in found)
    assert any("bad.py:2 imports echo_model.sampling" in v for v in found)


def test_importing_the_library_loads_nothing_above_it():
    code = (
        "import json, sys\n"
        "import echo_model, echo_model.sampling, echo_model.data, echo_model.drafting\n"
        "from echo_model.sampling import build_sampler, SAMPLERS\n"
        "from echo_model.data import load_dataset\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('echo_eval', 'train', 'app'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout) == []


def test_train_data_is_a_deprecated_alias_of_echo_model_data():
    sys.modules.pop("train.data", None)
    with pytest.warns(DeprecationWarning, match="echo_model.data"):
        import train.data as old  # noqa: F401
    import echo_model.data as new

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert old.load_dataset is new.load_dataset
        assert old.deduplicate is new.deduplicate
    assert sorted(old.__all__) == sorted(new.__all__)
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018
