"""Training checkpoints: safetensors and JSON only, written atomically, resumable to the bit.

Layout of ``<run>/checkpoints/``::

    ckpt-000050/
        encoder.safetensors  pooler.safetensors  loss.safetensors     module state dicts (loss: the proxies)
        optimizer.safetensors  optimizer.json                          AdamW state: tensors / everything else
        rng.safetensors                                                torch (and CUDA) generator states
        state.json                                                     step, config, numpy + python RNG states
    latest                                                             name of the newest complete checkpoint

There is no sampler state to save: a step's batch, its pairs and its sampling seed are functions of (seed, step)
(saga.train.batches). The global generators' states are saved and restored all the same, so that any code that
draws from them (dropout, a library's sampling) continues exactly.

No pickle anywhere: a checkpoint is data, never code, so loading one from elsewhere cannot run anything (unlike
`torch.load(weights_only=False)`). The optimizer state dict is flattened into named tensors plus a JSON of its
non-tensor parts (param groups, hyper-parameters).

Atomicity: everything is written into ``ckpt-XXXXXX.tmp/``, each file and the folder are fsynced, and the folder is
renamed to ``ckpt-XXXXXX/`` with `os.replace` (atomic on POSIX). The ``latest`` pointer is then replaced the same
way. A run killed at any moment therefore leaves either the previous or the new checkpoint complete, plus at most
a ``.tmp`` leftover that readers ignore (its name does not match) and the next save deletes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from saga.errors import CheckpointError
from saga.utils import default_permissions

CKPT_NAME = re.compile(r"^ckpt-(\d{6})$")
LATEST = "latest"
STATE = "state.json"  # written last: its presence marks a complete checkpoint folder


# ---------------------------------------------------------------- flattening to tensors + JSON
def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict -> ({"state.<param id>.<name>": tensor}, JSON-able rest)."""
    tensors, scalars = {}, {}
    for pid, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    """The global generators' states: torch (+ CUDA) as uint8 tensors; numpy and python random as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    meta = {"numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    n = meta["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = meta["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# ---------------------------------------------------------------- atomic writing
def _fsync(path: Path) -> None:
    """Flush a file or a directory entry to disk (a renamed folder is only durable once its parent is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def save_checkpoint(ckpt_dir: str | Path, step: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                    state: dict, keep: int = 3) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep` complete checkpoints.

    modules: name -> module (saved as <name>.safetensors); state: JSON-able run state (step and config are added
    by the caller). Returns the checkpoint folder.
    """
    ckpt_dir = Path(ckpt_dir)
    # A checkpoint is a point to come back to: never one whose weights hold NaN or inf (rotation would then delete
    # the last good one).
    broken = [f"{name}.{key}" for name, module in modules.items() for key, value in module.state_dict().items()
              if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if broken:
        names = ", ".join(broken[:5]) + (", ..." if len(broken) > 5 else "")
        raise CheckpointError(f"{ckpt_dir}: not saving step {step}, whose weights are not finite ({names}); the "
                              "newest checkpoint there is the last good one")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for leftover in ckpt_dir.glob("ckpt-*.tmp"):  # a save killed half-way; never read, removed here
        shutil.rmtree(leftover)
    name = f"ckpt-{step:06d}"
    tmp, final = ckpt_dir / f"{name}.tmp", ckpt_dir / name
    tmp.mkdir()

    for module_name, module in modules.items():
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()},
                  tmp / f"{module_name}.safetensors")
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    _write_json(opt_meta, tmp / "optimizer.json")
    rng_tensors, rng_meta = capture_rng()
    save_file(rng_tensors, tmp / "rng.safetensors")
    _write_json({**state, "step": step, "rng": rng_meta, "modules": sorted(modules)}, tmp / STATE)
    default_permissions(tmp)
    for file in tmp.iterdir():
        _fsync(file)
    _fsync(tmp)

    if final.exists():  # re-saving a step after a resume: the pointer still names an older, complete one
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(ckpt_dir)
    pointer = ckpt_dir / f"{LATEST}.tmp"
    pointer.write_text(name + "\n")
    _fsync(pointer)
    os.replace(pointer, ckpt_dir / LATEST)
    _fsync(ckpt_dir)

    for old in complete_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


# ---------------------------------------------------------------- reading
def complete_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (``.tmp`` leftovers and folders without state.json left out)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if CKPT_NAME.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(CKPT_NAME.match(p.name).group(1)))


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The folder `latest` names if it is complete, else the newest complete one (None if there is none)."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        named = ckpt_dir / pointer.read_text().strip()
        if CKPT_NAME.match(named.name) and (named / STATE).is_file():
            return named
    found = complete_checkpoints(ckpt_dir)
    return found[-1] if found else None


def read_state(path: str | Path) -> dict:
    """state.json of a checkpoint folder."""
    file = Path(path) / STATE
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot read the checkpoint state ({e})") from None


def load_checkpoint(path: str | Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    """Load weights and optimizer state in place, restore the global RNG states; return state.json."""
    path = Path(path)
    state = read_state(path)
    try:
        for name, module in modules.items():
            module.load_state_dict(load_file(path / f"{name}.safetensors"), strict=True)
        meta = json.loads((path / "optimizer.json").read_text())
        optimizer.load_state_dict(unflatten_optimizer(load_file(path / "optimizer.safetensors"), meta))
        restore_rng(load_file(path / "rng.safetensors"), state["rng"])
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as e:
        raise CheckpointError(f"{path}: cannot restore the checkpoint ({type(e).__name__}: {e})") from None
    return state


def config_differences(saved: dict, current: dict, ignore: tuple[str, ...] = ("optim.steps",),
                       prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, as 'key: saved -> current'."""
    out = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, ignore, f"{dotted}.")
        elif a != b and dotted not in ignore:
            out.append(f"{dotted}: {a!r} -> {b!r}")
    return out
