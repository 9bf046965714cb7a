"""`train(cfg, resume)`: one training run, from its run directory to the test metrics and the exported model.

The run directory (cfg.out_dir) ends up holding:
    config.yaml          the resolved config (rerun with `saga train --config <run>/config.yaml`)
    environment.json     library versions, platform, git commit (saga.utils.environment)
    metrics.jsonl        one line per logged step; test/* lines at evaluations
    completions.jsonl    sample completions of the judge with their pairs (SAGA)
    tensorboard/         the same metrics as TensorBoard events
    checkpoints/         ckpt-XXXXXX/ folders and the `latest` pointer (saga.train.checkpoint)
    test_metrics.json    the final zero-shot test metrics, keys as `saga eval --json`
    export/              the deployable encoder + pooler (saga.models.retrieval; `saga.load_model(<run>)`)
    test_embeddings.npz  the final test embeddings, as `saga embed --model <run>/export` writes them (a gallery
                         for `saga search`)
    class_neighbours.json  each train class's nearest classes (with dml.neighbour_classes)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from saga.config import TrainConfig, config_from_dict, dump_config, to_dict
from saga.data import load_dataset
from saga.data.base import Split
from saga.errors import CheckpointError, ConfigError
from saga.eval import evaluate
from saga.models import EmbedResult, embed_split, save_embeddings
from saga.train.batches import class_neighbours
from saga.train.checkpoint import (complete_checkpoints, config_differences, latest_checkpoint, load_checkpoint,
                                   read_state)
from saga.train.logger import COMPLETIONS, METRICS, RunLogger
from saga.train.loop import run_loop
from saga.train.setup import Parts, build_parts
from saga.utils import environment, resolve_device, seed_everything

# Outputs of an earlier attempt that never reached a checkpoint: a fresh run replaces them.
NEIGHBOURS = "class_neighbours.json"
TEST_EMBEDDINGS = "test_embeddings.npz"
_RUN_OUTPUTS = (METRICS, COMPLETIONS, "tensorboard", "test_metrics.json", "export", NEIGHBOURS, TEST_EMBEDDINGS)


def _checkpoint_to_resume(cfg: TrainConfig, run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint --resume continues from (None for a fresh run), after checking the config matches."""
    ckpt_dir = run_dir / "checkpoints"
    if not resume:
        if complete_checkpoints(ckpt_dir):
            raise ConfigError(f"{run_dir}: holds checkpoints of an earlier run; pass --resume to continue it, or "
                              "choose another out_dir")
        return None
    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is None:
        raise CheckpointError(f"{ckpt_dir}: no complete checkpoint to resume from")
    state = read_state(ckpt)
    differences = config_differences(to_dict(config_from_dict(state["config"], str(ckpt))), to_dict(cfg))
    if differences:
        raise ConfigError(f"{ckpt}: --resume with a config that differs from the run's (only optim.steps may "
                          "change): " + "; ".join(differences))
    if state["step"] > cfg.optim.steps:
        raise ConfigError(f"{ckpt}: the run is at step {state['step']}, past optim.steps={cfg.optim.steps}")
    return ckpt


def _class_names(split: Split) -> list[str]:
    """Class names in class-index order: row c of the nearest-class table is class c."""
    return [split.class_names[c] for c in sorted(split.class_names)]


def _write_neighbours(path: Path, split: Split, neighbours: np.ndarray) -> None:
    """Each train class's nearest classes, by name: for reading, and for a resumed run to read back."""
    names = _class_names(split)
    path.write_text(json.dumps({names[c]: [names[n] for n in row] for c, row in enumerate(neighbours)},
                               indent=1) + "\n")


def _read_neighbours(path: Path, split: Split, k: int) -> np.ndarray:
    """The table `_write_neighbours` wrote, as the (C, k) array of class indices."""
    names = _class_names(split)
    index = {name: i for i, name in enumerate(names)}
    try:
        table = json.loads(path.read_text())
        rows = [[index[n] for n in table[name]] for name in names]
    except (ValueError, KeyError, TypeError) as e:  # bad JSON, a missing or unknown class, not a mapping of lists
        raise CheckpointError(f"{path}: not this run's nearest-class table ({type(e).__name__}: {e}); delete it "
                              "to recompute it from the initial encoder") from e
    if any(len(row) != k for row in rows):
        raise CheckpointError(f"{path}: expected {k} nearest classes per class (dml.neighbour_classes)")
    return np.array(rows, dtype=np.int64).reshape(len(names), k)


def embed_test_split(parts: Parts, test: Split, cfg: TrainConfig) -> EmbedResult:
    """The test split through the current encoder + pooler."""
    return embed_split(parts.model, test, batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers)


def evaluate_test_split(parts: Parts, test: Split, cfg: TrainConfig) -> dict[str, float]:
    """Zero-shot retrieval metrics of the current encoder + pooler on the test split (docs/method.md, "Protocol")."""
    res = embed_test_split(parts, test, cfg)
    return evaluate(res.embeddings, res.labels, seed=cfg.seed)


def train(cfg: TrainConfig, resume: bool = False, *, on_step: Callable[[int], None] | None = None) -> dict:
    """Train `cfg.method` and return {"test_metrics": {...}, "run_dir": ..., "steps": ...}.

    resume: continue from the last complete checkpoint of cfg.out_dir; the result is the same as that of an
    uninterrupted run (bit-identical on CPU). on_step(step) is called after every completed step (after its
    checkpoint, if any); an exception raised there stops the run as a crash would (used by the tests).
    """
    run_dir = Path(cfg.out_dir)
    ckpt = _checkpoint_to_resume(cfg, run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    if ckpt is None:
        for name in _RUN_OUTPUTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    (run_dir / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")

    seed_everything(cfg.seed)  # pooler initialisation draws from torch's global generator
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.split_file)
    if cfg.needs_class_attributes and not data.class_attributes:
        raise ConfigError(f"grpo.attribute_reward and weights.attribute_nll need per-class attributes, which dataset "
                          f"{cfg.data.dataset!r} does not give (the synthetic world does)")
    parts = build_parts(cfg, data.train, device)
    neighbours = None
    if cfg.dml.neighbour_classes:
        table = run_dir / NEIGHBOURS
        if ckpt and table.exists():  # read back: the very same batches as before the interruption
            neighbours = _read_neighbours(table, data.train, cfg.dml.neighbour_classes)
        else:  # from the initial encoder: before a checkpoint's weights are loaded
            neighbours = class_neighbours(parts.encoder, parts.preprocessor, data.train, k=cfg.dml.neighbour_classes,
                                          batch_size=cfg.data.eval_batch_size)
            _write_neighbours(table, data.train, neighbours)
    start = load_checkpoint(ckpt, parts.trainable(), parts.optimizer)["step"] if ckpt else 0

    logger = RunLogger(run_dir, resume_step=start if ckpt else None)
    try:
        if cfg.eval_every and start == 0:  # the starting point, for the curves
            logger.log(0, {f"test/{k}": v for k, v in evaluate_test_split(parts, data.test, cfg).items()})
        run_loop(cfg, parts, data.train, logger, start=start, on_step=on_step, neighbours=neighbours,
                 class_attributes=data.class_attributes if cfg.needs_class_attributes else None,
                 evaluate=lambda: evaluate_test_split(parts, data.test, cfg))
        final = embed_test_split(parts, data.test, cfg)
        metrics = evaluate(final.embeddings, final.labels, seed=cfg.seed)
        logger.log(cfg.optim.steps, {f"test/{k}": v for k, v in metrics.items()})
    finally:
        logger.close()
    (run_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    export = parts.model.save_pretrained(run_dir / "export", run={
        "method": cfg.method, "dataset": cfg.data.dataset, "steps": cfg.optim.steps, "test_metrics": metrics,
        "config": to_dict(cfg)})
    save_embeddings(run_dir / TEST_EMBEDDINGS, final, model=str(export), kind="model", image_size=cfg.data.image_size)
    return {"test_metrics": metrics, "run_dir": str(run_dir), "steps": cfg.optim.steps}
