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
    test_embeddings.npz  the final test embeddings, as `saga embed --model <run>` writes them (a gallery for
                         `saga search`)
    class_neighbours.json  each train class's nearest classes (with dml.neighbour_classes)
    .saga.lock           held while a run writes here (saga.app.rundir)

Nothing in the folder is touched before the inputs (dataset, judge, backbone) are checked; a folder with an
earlier run's results is refused unless --resume or --overwrite.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from saga.app.rundir import RunLock, clear_for_new_run
from saga.config import TrainConfig, config_from_dict, dump_config, to_dict
from saga.data import DatasetSplits, load_dataset
from saga.data.base import Split
from saga.data.samplers import MPerClassSampler
from saga.errors import CheckpointError, ConfigError
from saga.eval import evaluate
from saga.models import EmbedResult, check_checkpoint, embed_split, save_embeddings
from saga.train import distributed
from saga.train.batches import class_neighbours
from saga.train.checkpoint import complete_checkpoints, config_differences, load_checkpoint, read_state
from saga.train.distributed import World
from saga.train.logger import RunLogger
from saga.train.loop import run_loop
from saga.train.methods import METHODS
from saga.train.setup import Parts, build_parts, require_judge
from saga.utils import environment, seed_everything

log = logging.getLogger(__name__)

NEIGHBOURS = "class_neighbours.json"
TEST_EMBEDDINGS = "test_embeddings.npz"


def check_inputs(cfg: TrainConfig, world: World = World()) -> DatasetSplits:
    """Everything a run reads, checked before its folder is touched: the dataset (a missing synthetic world is
    rendered, as `saga benchmark` does, by rank 0), the class attributes some options need, the judge and backbone
    checkpoints, and that the batch and the pairs split over the processes. Returns the dataset."""
    if cfg.data.dataset == "synth":
        from saga.synth.generate import ensure_world, world_complete

        if not world_complete(cfg.data.root):  # `saga synth --out ROOT`: the defaults the synthetic presets name
            distributed.on_main(lambda: ensure_world(cfg.data.root))
    if cfg.grpo.pairs_per_step % world.size and METHODS.get(cfg.method).needs_judge:
        raise ConfigError(f"grpo.pairs_per_step={cfg.grpo.pairs_per_step} does not split over {world.size} "
                          "processes: each mines an equal share")
    data = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.split_file, check_counts=cfg.data.check_counts)
    if cfg.needs_class_attributes and not data.class_attributes:
        raise ConfigError(f"grpo.attribute_reward and weights.attribute_nll need per-class attributes, which dataset "
                          f"{cfg.data.dataset!r} does not give (the synthetic world does)")
    # The batches this dataset gives with these settings (enough classes, whole classes per process).
    MPerClassSampler(data.train.labels, cfg.dml.m_per_class, cfg.dml.batch_size, rank=world.rank,
                     world_size=world.size)
    require_judge(cfg)
    for checkpoint in {cfg.model.judge, cfg.model.backbone} - {None, ""}:
        check_checkpoint(checkpoint)
    return data


def _resume_candidates(cfg: TrainConfig, run_dir: Path) -> list[Path]:
    """The complete checkpoints --resume may continue from, newest first, after checking that the run's config
    matches (read from the newest checkpoint whose state is readable)."""
    ckpt_dir = run_dir / "checkpoints"
    candidates = complete_checkpoints(ckpt_dir)[::-1]
    if not candidates:
        raise CheckpointError(f"{ckpt_dir}: no complete checkpoint to resume from")
    for ckpt in candidates:
        try:
            state = read_state(ckpt)
        except CheckpointError as e:
            log.warning("%s", e)
            continue
        differences = config_differences(to_dict(config_from_dict(state["config"], str(ckpt))), to_dict(cfg))
        if differences:
            raise ConfigError(f"{ckpt}: --resume with a config that differs from the run's (only optim.steps may "
                              "change): " + "; ".join(differences))
        if state["step"] > cfg.optim.steps:
            raise ConfigError(f"{ckpt}: the run is at step {state['step']}, past optim.steps={cfg.optim.steps}")
        break
    return candidates


def _restore(candidates: list[Path], parts: Parts) -> dict:
    """Load the newest intact checkpoint of `candidates` into `parts` (weights, optimizer, RNG states) and return
    its state; a broken one (truncated file, unreadable state) is named in a warning and the previous one tried."""
    for i, ckpt in enumerate(candidates):
        try:
            return load_checkpoint(ckpt, parts.trainable(), parts.optimizer)
        except CheckpointError as e:
            fallback = f"; resuming from {candidates[i + 1].name} instead" if i + 1 < len(candidates) else ""
            log.warning("%s%s", e, fallback)
    raise CheckpointError(f"{candidates[0].parent}: no intact checkpoint to resume from "
                          f"({', '.join(c.name for c in candidates)} are all broken)")


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
    """The test split through the current encoder + pooler; with several processes each embeds every N-th image
    and every rank gets the whole split back, in order."""
    world = parts.world
    if world.size == 1:
        return embed_split(parts.model, test, batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers)
    mine = np.arange(world.rank, len(test), world.size)
    shard = Split(test.name, [test.paths[i] for i in mine], test.labels[mine], test.class_names)
    res = embed_split(parts.model, shard, batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers) \
        if len(mine) else None
    gathered = distributed.gather_objects((mine, None if res is None else res.embeddings,
                                           0.0 if res is None else res.images_per_s))
    order = np.concatenate([ids for ids, _, _ in gathered])
    embeddings = np.concatenate([e for _, e, _ in gathered if e is not None])[np.argsort(order)]
    return EmbedResult(embeddings, test.labels, [str(p) for p in test.paths], sum(r for _, _, r in gathered))


def evaluate_test_split(parts: Parts, test: Split, cfg: TrainConfig) -> dict[str, float]:
    """Zero-shot retrieval metrics of the current encoder + pooler on the test split (docs/method.md, "Protocol")."""
    res = embed_test_split(parts, test, cfg)
    return evaluate(res.embeddings, res.labels, seed=cfg.seed)


def _prepare_run_dir(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, world: World,
                     stack: ExitStack) -> None:
    """Rank 0 takes the folder's lock for the run (held by `stack`), clears it for a new run (or refuses to) and
    writes the config and environment; every rank learns whether that failed, so none goes on alone."""
    def prepare() -> None:
        stack.enter_context(RunLock(run_dir))  # only now is the run folder written to
        if not resume:
            clear_for_new_run(run_dir, overwrite)
        dump_config(cfg, run_dir / "config.yaml")
        env = {**environment(), "world_size": world.size, "launcher": world.launcher}
        (run_dir / "environment.json").write_text(json.dumps(env, indent=2) + "\n")

    distributed.on_main(prepare)


def _neighbour_table(cfg: TrainConfig, parts: Parts, split: Split, run_dir: Path, resuming: bool) -> np.ndarray | None:
    """The nearest-class table of `dml.neighbour_classes`: read back on resume (the very same batches as before the
    interruption), else computed by rank 0 from the initial encoder, written, and shared with every rank."""
    if not cfg.dml.neighbour_classes:
        return None
    table, k = run_dir / NEIGHBOURS, cfg.dml.neighbour_classes
    if resuming and table.exists():
        return _read_neighbours(table, split, k)
    def compute() -> np.ndarray:  # before a checkpoint's weights are loaded: the initial encoder
        neighbours = class_neighbours(parts.encoder, parts.preprocessor, split, k=k,
                                      batch_size=cfg.data.eval_batch_size)
        _write_neighbours(table, split, neighbours)
        return neighbours

    return distributed.on_main(compute)


def train(cfg: TrainConfig, resume: bool = False, *, overwrite: bool = False,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Train `cfg.method` and return {"test_metrics": {...}, "run_dir": ..., "steps": ...}.

    resume: continue from the newest intact checkpoint of cfg.out_dir; the result is the same as that of an
    uninterrupted run (bit-identical on CPU). overwrite: delete an earlier run's results in cfg.out_dir (refused
    otherwise). on_step(step) is called after every completed step (after its checkpoint, if any); an exception
    raised there stops the run as a crash would (used by the tests).
    """
    run_dir = Path(cfg.out_dir)
    world = distributed.init(cfg.device)
    data = check_inputs(cfg, world)
    candidates = _resume_candidates(cfg, run_dir) if resume else []
    seed_everything(cfg.seed)  # pooler initialisation draws from torch's global generator: the same on every rank
    parts = build_parts(cfg, data.train, world.device, world)  # loading checks the weights too
    with ExitStack() as stack:
        _prepare_run_dir(cfg, run_dir, resume, overwrite, world, stack)
        neighbours = _neighbour_table(cfg, parts, data.train, run_dir, resuming=bool(candidates))
        state = _restore(candidates, parts) if candidates else {"step": 0}
        start, steps = state["step"], 0 if cfg.eval_only else cfg.optim.steps
        if candidates and state.get("world_size", 1) != world.size and world.is_main:
            log.warning("%s: resuming a run of %d process(es) on %d: the batches are the same, each step's pairs "
                        "and rollouts are not those an uninterrupted run would have had", run_dir,
                        state.get("world_size", 1), world.size)

        logger = RunLogger(run_dir, resume_step=start if candidates else None, final_step=steps,
                           enabled=world.is_main)
        try:
            if not cfg.eval_only:
                if cfg.eval_every and start == 0:  # the starting point, for the curves
                    logger.log(0, {f"test/{k}": v for k, v in evaluate_test_split(parts, data.test, cfg).items()})
                run_loop(cfg, parts, data.train, logger, start=start, on_step=on_step, neighbours=neighbours,
                         class_attributes=data.class_attributes if cfg.needs_class_attributes else None,
                         evaluate=lambda: evaluate_test_split(parts, data.test, cfg),
                         skipped=state.get("skipped_steps", 0))
            final = embed_test_split(parts, data.test, cfg)
            metrics = distributed.broadcast(evaluate(final.embeddings, final.labels, seed=cfg.seed)
                                            if world.is_main else None)
            logger.log(steps, {f"test/{k}": v for k, v in metrics.items()})
        finally:
            logger.close()
        if world.is_main:
            (run_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            export = parts.model.save_pretrained(run_dir / "export", run={
                "method": cfg.method, "dataset": cfg.data.dataset, "steps": steps, "test_metrics": metrics,
                "config": to_dict(cfg)})
            save_embeddings(run_dir / TEST_EMBEDDINGS, final, model=str(export), kind="model",
                            image_size=cfg.data.image_size)
        distributed.barrier()
    return {"test_metrics": metrics, "run_dir": str(run_dir), "steps": steps}
