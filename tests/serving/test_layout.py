"""How the serving package is laid out: module names, what goes into the model archive, and the
rule that serving never imports training (it runs self-contained artifacts)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVING = REPO / "serving"
SOURCES = sorted(SERVING.rglob("*.py"))


def module_name(source: Path) -> str:
    parts = source.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``: top-level, in functions, relative,
    and ``importlib.import_module`` / ``__import__`` of a constant name."""
    package = module_name(source).split(".")
    if source.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, module))
            # ``from . import x`` / ``from .. import training`` import x as a module too.
            found += [(node.lineno, f"{module}.{alias.name}" if module else alias.name) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def is_training(module: str) -> bool:
    return module == "training" or module.startswith("training.")


def test_no_serving_module_imports_training():
    """serving runs self-contained artifacts; a server needs torch, numpy and PIL, never training."""
    assert len(SOURCES) > 10
    bad = [f"{source.relative_to(REPO)}:{line} imports {module}"
           for source in SOURCES for line, module in imported_modules(source) if is_training(module)]
    assert not bad, bad


def test_the_import_check_sees_every_form(tmp_path, monkeypatch):
    """The AST check above catches absolute, relative, function-level and dynamic imports."""
    package = tmp_path / "serving"
    package.mkdir()
    (package / "__init__.py").write_text("")
    forms = ["import training", "import training.data as d", "from training.export import load_artifact",
             "from .. import training", "from ..training import attacks",
             "def f():\n    from training import evaluation", "importlib.import_module('training.attacks')"]
    for i, form in enumerate(forms):
        (package / f"m{i}.py").write_text(form + "\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    for i in range(len(forms)):
        assert any(is_training(m) for _, m in imported_modules(package / f"m{i}.py")), forms[i]
    (package / "ok.py").write_text("import trainingwheels\nfrom . import predictor\nfrom serving import training_x\n")
    assert not any(is_training(m) for _, m in imported_modules(package / "ok.py"))


def test_every_serving_module_imports_without_training():
    """A fresh interpreter imports all of serving and ends up with no ``training`` module loaded."""
    modules = [module_name(source) for source in SOURCES]
    code = ("import importlib, sys, warnings\n"
            "warnings.simplefilter('ignore', DeprecationWarning)  # serving.handler, the old name, warns\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m == 'training' or m.startswith('training.'))\n"
            "assert not bad, bad\n"
            "print(len(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_archive_carries_everything_the_torchserve_handler_imports():
    """PACKAGED_MODULES is closed: every serving module ts_handler.py reaches is in the .mar."""
    from serving.archive import PACKAGED_MODULES

    needed, todo = set(), [SERVING / "ts_handler.py"]
    while todo:
        for _, module in imported_modules(todo.pop()):
            parts = module.split(".")
            if parts[0] == "serving" and len(parts) > 1 and (SERVING / f"{parts[1]}.py").is_file():
                if f"{parts[1]}.py" not in needed:
                    needed.add(f"{parts[1]}.py")
                    todo.append(SERVING / f"{parts[1]}.py")
    assert needed | {"__init__.py"} == set(PACKAGED_MODULES)


def test_the_old_predictor_name_warns_and_re_exports(monkeypatch):
    """``serving.handler`` was the predictor's name; users' imports of it keep working, with a warning."""
    import serving.predictor as predictor

    monkeypatch.delitem(sys.modules, "serving.handler", raising=False)
    with pytest.warns(DeprecationWarning, match=r"import serving\.predictor instead"):
        shim = importlib.import_module("serving.handler")
    assert shim.__all__ == predictor.__all__
    for name in predictor.__all__:
        assert getattr(shim, name) is getattr(predictor, name), name
    # What the old module was imported for, here and in users' code.
    for name in ("Limits", "Predictor", "RequestError", "decode_image", "extract_image", "is_error", "parse_topk",
                 "select_device", "keep_freed_memory", "dumps", "IMAGE_FORMATS", "TOPK_HEADER", "TOPK_PARAM"):
        assert name in predictor.__all__, name


def test_one_table_of_error_types():
    """The predictor's and the front's error answers take their ``type`` from serving/errors.py alone."""
    from serving.errors import ERROR_TYPES
    from serving.predictor import RequestError

    for source in SERVING.glob("*.py"):
        if source.name != "errors.py":
            assert '"PayloadTooLarge"' not in source.read_text(), f"{source.name} keeps its own table of error types"
    for code in (400, 413, 415):
        assert RequestError(code, "m").to_json("clead")["type"] == ERROR_TYPES[code]
    assert RequestError(418, "m").to_json("clead")["type"] == "Error"


def test_the_cli_reads_its_defaults_from_the_dataclasses_without_loading_torch():
    """``clead-serve`` takes every server, archive, Triton, red-team and restart default from its
    dataclass; importing those (and the CLI) must not cost a torch import on every command."""
    code = ("import sys, serving.cli as c; "
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules), 'torch was imported'; "
            "p = c.build_parser(); sub = next(a for a in p._actions if a.__class__.__name__ == '_SubParsersAction'); "
            "d = lambda cmd, dest: next(x.default for x in sub.choices[cmd]._actions if x.dest == dest); "
            "assert d('up', 'inference_port') == c.ServerConfig().inference_port; "
            "assert d('up', 'batch_size') == c.ArchiveConfig().batch_size; "
            "assert d('triton', 'max_queue_delay_us') == c.TritonServeConfig().max_queue_delay_us; "
            "assert d('redteam', 'queries') == c.RedteamConfig().queries; "
            "assert d('up', 'restart_window') == c.RestartPolicy().window_s; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
