"""The Triton environment: a small venv for PyTriton beside the project's main one.

nvidia-pytriton pins ``numpy<2`` while the rest of the project runs on numpy 2. Rather than
downgrade everyone, the ``triton`` extra is installed into its own venv (``.venv-triton`` at
the repository root, or ``$CLEAD_TRITON_VENV``). To avoid a second multi-GB torch download,
that venv *appends* the main environment's site-packages to its path through a ``.pth`` file:
its own numpy 1.x, PyTriton and tritonclient come first, torch / Pillow / this project come
from the main environment (torch's numpy bridge is built for numpy 2, which runs on 1.x).

``clead-serve triton`` and ``clead-serve predict --engine triton`` call :func:`reexec_in_env`,
so users never activate this venv by hand.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STAMP = "clead-triton.json"
PTH = "zz_clead_main_env.pth"  # "zz": processed after the venv's own .pth files


def triton_requirements() -> list[str]:
    """The ``triton`` extra of this project's installed metadata (pyproject is the one source)."""
    try:
        requires = importlib.metadata.requires("clead") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError("the clead project is not installed; run `pip install -e '.[serving]'` first") from exc
    marker = re.compile(r";\s*extra\s*==\s*['\"]triton['\"]")
    reqs = [marker.split(r)[0].strip() for r in requires if marker.search(r)]
    if not reqs:
        raise RuntimeError("the installed clead metadata has no 'triton' extra; reinstall with `pip install -e .`")
    return reqs


def venv_dir() -> Path:
    return Path(os.environ.get("CLEAD_TRITON_VENV") or REPO_ROOT / ".venv-triton")


def venv_python(root: Path) -> Path:
    return root / "bin" / "python"


def has_pytriton() -> bool:
    return importlib.util.find_spec("pytriton") is not None and importlib.util.find_spec("tritonclient") is not None


def ensure_env(root: Path | None = None, log=print) -> Path:
    """Create or update the Triton venv; returns its python. Idempotent and cheap when current."""
    root = root or venv_dir()
    main_site = sysconfig.get_paths()["purelib"]
    want = {"requirements": triton_requirements(), "main_site": main_site, "python": sys.version.split()[0]}
    stamp = root / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == want and venv_python(root).exists():
        return venv_python(root)
    python = venv_python(root)
    if not python.exists():
        log(f"creating the Triton environment in {root} (one time) ...")
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", str(root)], check=True)
    site_dir = Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    pth = site_dir / PTH
    # Install with the link removed, so pip sees only this venv and never touches the main one.
    pth.unlink(missing_ok=True)
    log(f"installing {' '.join(want['requirements'])} into {root} ...")
    subprocess.run([str(python), "-m", "pip", "install", "-q", *want["requirements"]], check=True)
    pth.write_text(f"import site; site.addsitedir({main_site!r})\n")
    stamp.write_text(json.dumps(want, indent=2) + "\n")
    return python


def triton_env_vars() -> dict[str, str]:
    """Environment for PyTriton: Triton's Python stub must load *this* interpreter's libpython."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [libdir] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(p for p in parts if p))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def reexec_in_env(argv: list[str]) -> None:
    """Run ``clead-serve <argv>`` again inside the Triton venv (creating it if needed); never returns."""
    python = ensure_env(log=lambda msg: print(msg, file=sys.stderr))
    env = triton_env_vars()
    env["CLEAD_IN_TRITON_ENV"] = "1"  # guards against a re-exec loop if the venv is broken
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(str(python), [str(python), "-m", "serving.cli", *argv], env)
