"""Small helpers shared by the library: devices, dtypes, seeds, run metadata, file permissions."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """'auto' -> bfloat16 on GPU, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use float32, bfloat16, float16 or auto") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(package_dir: str | Path = Path(__file__).resolve().parent) -> dict | None:
    """The commit of the checkout this package was imported from ({"commit", "dirty"}), or None when the package
    is not inside its own checkout (an installed wheel, or a virtualenv that happens to sit in another repository):
    the repository must hold the package at src/saga."""
    package_dir = Path(package_dir).resolve()
    top = _git(["rev-parse", "--show-toplevel"], package_dir)
    if top is None or (Path(top).resolve() / "src" / "saga") != package_dir:
        return None
    commit = _git(["rev-parse", "HEAD"], package_dir)
    status = _git(["status", "--porcelain", "--untracked-files=no"], package_dir)
    return None if commit is None else {"commit": commit, "dirty": bool(status)}


def environment() -> dict:
    """Library versions, platform and git commit, written into every run directory."""
    import importlib.metadata as md

    git = git_commit()
    versions = {}
    for pkg in ("saga-retrieval", "torch", "transformers", "accelerate", "numpy", "pytorch-metric-learning",
                "scikit-learn", "faiss-cpu", "safetensors", "pillow", "peft"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": git["commit"] if git else None,  # of the checkout the package runs from (None if none)
        "git_dirty": git["dirty"] if git else None,
        "cpu_threads": torch.get_num_threads(),
    }


def default_permissions(path: str | Path) -> None:
    """Give a file (or every file and folder under a folder) the permissions of an ordinary new file under the
    process umask: safetensors writes its files 0600, so checkpoints and exports would otherwise be unreadable to
    the rest of a team sharing the run directory."""
    umask = os.umask(0)
    os.umask(umask)
    path = Path(path)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
