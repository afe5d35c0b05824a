"""The installation is reproducible: uv.lock matches pyproject.toml and pins what the code needs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from processors.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _lock() -> dict[str, str]:
    data = tomllib.loads((ROOT / "uv.lock").read_text())
    return {pkg["name"]: pkg.get("version", "") for pkg in data["package"]}


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs.extend(Requirement(r) for r in extra)
    return reqs


def test_lock_is_in_sync_with_pyproject() -> None:
    """`uv lock --check` fails when pyproject.toml changed without `./dev lock`."""
    uv = Path(sys.executable).with_name("uv")
    assert uv.exists(), f"uv is in the dev extra and should be installed beside {sys.executable}"
    done = subprocess.run(
        [str(uv), "lock", "--check", "--offline", "--python", sys.executable],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"uv.lock is stale; run ./dev lock\n{done.stderr}"


def test_every_direct_requirement_is_locked_inside_its_range() -> None:
    locked = _lock()
    for req in _requirements():
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in locked, f"{req.name} is not in uv.lock"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"{req.name} {locked[name]} is outside {req.specifier}"
        )


@pytest.mark.parametrize(
    ("name", "floor"),
    [
        # lower bounds above known advisories
        ("asyncssh", "2.14.2"),  # CVE-2023-48795 (Terrapin)
        ("aiohttp", "3.12.14"),  # CVE-2025-53643 (request smuggling)
        ("cryptography", "42.0.4"),  # CVE-2024-26130
        # the code imports testcontainers.community.kafka, first shipped in 4.15
        ("testcontainers", "4.15"),
    ],
)
def test_lower_bounds_stay_above_known_problems(name: str, floor: str) -> None:
    req = next(r for r in _requirements() if r.name == name)
    lowest = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert lowest, f"{name} has no lower bound"
    assert min(lowest) >= Version(floor), f"{name}: {req.specifier} admits versions below {floor}"


def test_uv_bootstrap_pin_matches_the_lock() -> None:
    text = (ROOT / "tools" / "uv-bootstrap.txt").read_text()
    pinned = re.search(r"^uv==([0-9.]+)", text, re.MULTILINE)
    assert pinned is not None
    assert pinned.group(1) == _lock()["uv"]
    assert text.count("--hash=sha256:") >= 1


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"processors {project['version']}"
