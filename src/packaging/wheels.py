"""Binary wheels of the shipped packages, for the Kaggle image's Python and platform, into the code dataset.

Called by the build. ``pip download --only-binary=:all: --no-deps`` fetches exactly the pinned
distributions (their requirements are pinned too, src/packaging/environment.py, so nothing is resolved
and torch is never pulled in). The downloader is a plain function so that tests can give a fake one
and never touch the network. ``wheels/requirements.txt`` lists the pins with the module each provides;
the notebook installs from it with ``--no-index --no-deps`` and checks that every module imports.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

from .environment import Pin, canonical

REQUIREMENTS = "requirements.txt"
Downloader = Callable[[list[str], Path, str, list[str]], None]  # (requirements, folder, python, platforms)


def platform_tags(platform: str) -> list[str]:
    """pip's ``--platform`` values for a glibc ceiling: ``manylinux_2_35_x86_64`` -> every manylinux tag a
    machine with glibc 2.35 accepts (pip does not widen the one it is given), legacy aliases included."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    minor, arch = int(match.group(1)), match.group(2)
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]


def pip_download(requirements: list[str], folder: Path, python_version: str, platforms: list[str]) -> None:
    """The real downloader: ``pip download`` of binary wheels for the target; raises CalledProcessError."""
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--python-version",
               python_version, "--implementation", "cp", "--dest", str(folder), "--quiet"]
    for tag in platforms:
        command += ["--platform", tag]
    print(f"[wheels] pip download --only-binary=:all: --no-deps: {len(requirements)} packages for Python "
          f"{python_version}, {platforms[0]} and older")
    subprocess.run(command + requirements, check=True)


def wheel_name(path: Path | str) -> str:
    """The canonical distribution name of a wheel file (``python_gdcm-3.2.6-cp311-...whl`` -> python-gdcm)."""
    return canonical(Path(path).name.split("-")[0])


def write_wheels(pins: list[Pin], folder: Path, python_version: str, platform: str,
                 download: Downloader = pip_download) -> list[Path]:
    """Download a wheel for every pin into ``folder`` and write ``folder/requirements.txt``; the wheel files."""
    folder.mkdir(parents=True, exist_ok=True)
    if pins:
        download([p.requirement for p in pins], folder, python_version, platform_tags(platform))
    lines = [f"# written by python -m src.kaggle build: Python {python_version}, {platform}; "
             f"installed with pip install --no-index --no-deps -r"]
    lines += [f"{p.requirement}  # module: {p.module or '-'}" for p in pins]
    (folder / REQUIREMENTS).write_text("\n".join(lines) + "\n")
    return sorted(folder.glob("*.whl"))


def read_requirements(folder: Path) -> list[tuple[str, str]]:
    """(requirement, module) of every line of ``folder/requirements.txt``."""
    out = []
    for line in (folder / REQUIREMENTS).read_text().splitlines():
        requirement, _, comment = line.partition("#")
        if requirement.strip():
            module = comment.split("module:")[-1].strip() if "module:" in comment else "-"
            out.append((requirement.strip(), "" if module == "-" else module))
    return out


def missing_wheels(folder: Path) -> list[str]:
    """The requirements of ``folder/requirements.txt`` with no wheel file of that distribution and version beside it,
    each as ``name==version (module M)``."""
    present = {}
    for path in folder.glob("*.whl"):
        parts = path.name.split("-")
        present.setdefault(wheel_name(path), set()).add(parts[1] if len(parts) > 1 else "")
    missing = []
    for requirement, module in read_requirements(folder):
        name, _, version = requirement.partition("==")
        if version not in present.get(canonical(name), set()):
            missing.append(f"{requirement} (module {module or canonical(name)})")
    return missing
