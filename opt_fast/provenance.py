"""Where a result comes from: the versions of the packages that define the envs and the code, this machine, and the
commit of the source tree; recorded in every summary, every generated dataset and the benchmark pages."""
from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch

from opt_fast.data.names import ADROIT_FAMILIES, ANTMAZE_FAMILY


def package_versions(packages: Sequence[str] = ("opt-fast", "torch", "gymnasium", "mujoco", "numpy")) -> dict[str, str]:
    """Each package's installed version, ``not installed`` where it is not (the provenance of generated data)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def gymnasium_robotics_version() -> str:
    """The installed gymnasium-robotics (Adroit rewards changed between its releases without a version bump)."""
    return importlib_metadata.version("gymnasium-robotics")


def env_package_versions(family: str) -> dict[str, str]:
    """Versions of the packages that define the env's dynamics and rewards, recorded with every result
    (gymnasium-robotics changed Adroit rewards without a version bump)."""
    packages = ["gymnasium", "mujoco"]
    if family in ADROIT_FAMILIES or family == ANTMAZE_FAMILY:
        packages.append("gymnasium-robotics")
    return {package: importlib_metadata.version(package) for package in packages}


def machine_description() -> str:
    """CPU model, core count, memory and OS of this machine (and its GPU, when one is visible)."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        total_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal"))
        memory = f", {total_kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{memory}{gpu}; {platform.system()} {platform.release()}"


def code_version() -> str:
    """opt-fast's version, and the git commit of its source tree when it runs from a checkout (``+dirty`` when the
    tree has uncommitted changes), for every result's provenance."""
    version = importlib_metadata.version("opt-fast")
    source = Path(__file__).resolve().parent.parent
    if not (source / "pyproject.toml").exists():  # an installed copy: any enclosing repository is not its source
        return version
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} ({commit}{'+dirty' if dirty else ''})"
