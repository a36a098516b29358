"""Security properties that need no server: dependency versions, bind addresses, safe defaults.

The server-side halves (token auth on, registration off, health without a key) are in
``test_servers.py``; docs/security.md maps every measure to its test.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
# The first releases without the published vulnerabilities the old torchattacks pin dragged in:
# requests CVE-2024-35195 / CVE-2024-47081, urllib3 CVE-2024-37891, idna CVE-2024-3651.
FLOORS = {"requests": "2.32.4", "urllib3": "2.2.2", "idna": "3.7"}


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_http_stack_is_above_its_published_vulnerabilities(package):
    """Checked in the environment the server, the client and the demo run in (this one)."""
    assert Version(version(package)) >= Version(FLOORS[package]), (
        f"{package} {version(package)} has published vulnerabilities; `make setup` installs >= {FLOORS[package]}")


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_pyproject_and_constraints_keep_the_floors(package):
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"{package}>={FLOORS[package]}"' in pyproject
    pinned = re.search(rf"^{package}==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert pinned and Version(pinned.group(1)) >= Version(FLOORS[package])


def test_torchattacks_is_no_dependency_and_is_installed_without_its_pin():
    """Its requests~=2.25.1 pin is why it stays out of pyproject; make setup adds it with --no-deps."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert not re.search(r'^\s*"torchattacks', pyproject, re.M)
    assert "--no-deps" in (REPO / "Makefile").read_text()
    try:
        import torchattacks  # noqa: F401  (it must work without requests 2.25)
    except PackageNotFoundError:  # pragma: no cover
        pytest.skip("torchattacks not installed")


def test_library_ranges_and_lock_agree():
    """pyproject gives ranges (torch >= 2.11), constraints.txt the exact tested versions."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"torch>=2.11"' in pyproject and "torch==" not in pyproject
    lock = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert Version(lock["torch"]) >= Version("2.11")
    assert lock["torchserve"] == version("torchserve")
