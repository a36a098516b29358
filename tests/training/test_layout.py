"""The shape of the training package: no import circle, every module importable on its own,
the old import paths still working (with a deprecation warning), and no long functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "training"
# Old module paths kept as aliases of where their code went.
MOVED = {
    "training.evaluation_cli": "training.cli.evaluate",
    "training.export_cli": "training.cli.export",
    "training.suspicion_cli": "training.cli.suspicion",
    "training.third_party": "training.attacks.third_party",
    "training.sanity": "training.evaluation.sanity",
}
MAX_LINES = 50  # a function longer than this says why in its docstring ("long because ...")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The training modules that ``path`` imports anywhere in it (module level or inside a
    function: a lazy import that closes a circle is a circle all the same)."""
    name, found = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m in known and m != name}


def test_no_import_circle_in_training():
    mods = modules()
    graph = {name: imported(path, set(mods)) for name, path in mods.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_checker_finds_a_circle(tmp_path, monkeypatch):
    """The walk above would see the circle that config -> methods -> config once was."""
    pkg = tmp_path / "training"
    (pkg / "methods").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def validate():\n    from training.methods import names\n")
    (pkg / "methods" / "__init__.py").write_text("from training.config import validate\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    with pytest.raises(pytest.fail.Exception, match="import circle: training.config -> training.methods -> training.config"):
        test_no_import_circle_in_training()


def test_every_training_module_imports_on_its_own():
    """Each module imported first, in a clean state (the training modules dropped from
    ``sys.modules`` before each one, torch kept loaded to keep the test fast)."""
    names = [n for n in modules() if n not in MOVED and n not in ("training.__main__", "training.campaign")]
    script = (
        "import importlib, sys, warnings\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'training' or m.startswith('training.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(" + repr(names) + "))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_import_paths_warn_and_forward(old, new):
    import importlib

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} has moved to {new}"):
        module = importlib.import_module(old)
    target = importlib.import_module(new)
    public = [n for n in dir(target) if not n.startswith("_") and callable(getattr(target, n))]
    assert public and all(getattr(module, n) is getattr(target, n) for n in public)


def test_fit_cli_names_moved_from_train_still_resolve():
    import training.cli.fit as fit_cli
    import training.train as train

    with pytest.warns(DeprecationWarning, match="training.train.add_arguments has moved to training.cli.fit"):
        assert train.add_arguments is fit_cli.add_arguments
    with pytest.raises(AttributeError):
        train.no_such_name  # noqa: B018


def long_functions(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if lines > MAX_LINES and "long because" not in doc.lower():
                    found.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_training_is_longer_than_a_screen():
    assert long_functions(PACKAGE) == []


def test_the_old_spelling_of_the_suspicion_command_still_runs():
    result = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-m", "training.suspicion_cli",
                             "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "augment" in result.stdout


def test_method_options_are_declared_once_with_their_flags():
    """Every method option has a flag and help; two methods never give one flag two meanings."""
    from training.methods import METHODS, method_names, option_fields

    flags = [f.metadata["flag"] for f in option_fields()]
    assert len(flags) == len(set(flags)) and "--tau" in flags and "--beta" in flags
    for name in method_names():
        for f in METHODS.get(name).Options.flags():
            assert f.metadata["help"] and f.metadata["flag"].startswith("--")
    # The run config knows no method: it imports none of the methods' modules and lists none.
    mods = modules()
    assert not {m for m in imported(mods["training.config"], set(mods)) if m.startswith("training.methods")}
    import training.config as config

    assert not hasattr(config, "METHODS") and not hasattr(config, "ADVERSARIAL")
