"""Data-parallel training on the CPU: 2 processes over gloo, started as users start them (torchrun).

The invariant (saga.train.distributed): the global batch is the same on 1 or N processes, L_DML sees all of it,
each rank mines its share of the pairs from its share of the batch with its own seed, and DDP averages the ranks'
L_GRPO and L_KL gradients. The single-process equivalent below computes exactly that.
"""

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saga.app.run import train
from saga.config import load_config
from saga.data import load_dataset
from saga.train import build_parts
from saga.train.batches import StepBatches
from saga.train.distributed import World, gather_batch
from saga.train.methods import saga_step

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parents[1] / "configs"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def world8(tmp_path_factory):
    """8 classes x 4 images: 4 train classes, so that a batch of 4 classes x 2 splits into whole classes."""
    from saga.synth import generate_world

    return generate_world(tmp_path_factory.mktemp("world8"), num_classes=8, images_per_class=4, size=64, seed=0,
                          workers=1)


@pytest.fixture(scope="module")
def ddp_step():
    spec = importlib.util.spec_from_file_location("ddp_step", HERE / "ddp_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args, timeout=240):
    out = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_one_step_on_two_processes_has_the_gradients_of_its_single_process_equivalent(
        world8, tiny_vlm_dir, tmp_path, ddp_step, monkeypatch):
    _run([str(HERE / "ddp_step.py"), str(world8), str(tiny_vlm_dir), str(tmp_path / "ddp.safetensors")])
    got = load_file(tmp_path / "ddp.safetensors")

    from saga.judge import FrozenJudge

    monkeypatch.setattr(FrozenJudge, "rollout", FrozenJudge.rollout)  # restored after the test
    ddp_step.parity_verdicts()
    cfg = load_config(None, [*ddp_step.OVERRIDES, f"data.root={world8}", f"model.judge={tiny_vlm_dir}"])
    split = load_dataset("synth", world8).train
    torch.manual_seed(cfg.seed)
    parts = build_parts(cfg, split, torch.device("cpu"))
    full = StepBatches(split.labels, m=2, batch_size=8, seed=cfg.seed).batch(0)
    # L_DML on the whole global batch...
    out = parts.model(**ddp_step.batch_of(split, full, parts.preprocessor).inputs)
    loss = cfg.weights.dml * parts.dml_loss(*gather_batch(out.embedding, torch.tensor(split.labels[full])))["loss"]
    # ... plus the mean over the ranks of each rank's L_GRPO and L_KL, on its share, with its pairs and seed.
    for rank in range(2):
        shard = ddp_step.batch_of(split, full[4 * rank:4 * (rank + 1)], parts.preprocessor)
        terms = saga_step(dataclasses.replace(parts, world=World(rank, 2)), cfg, shard, 0).terms
        loss = loss + (cfg.weights.grpo * terms["grpo"]["loss"] + cfg.weights.kl * terms["kl"]["loss"]) / 2
    loss.backward()
    expected = ddp_step.grads(parts)
    assert got.keys() == expected.keys()
    assert any(v.abs().sum() > 0 for k, v in got.items() if k.startswith("encoder.tower.merger"))
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


def _descendants(pid: int) -> list[int]:
    """The processes started by `pid`, at any depth (torchrun starts its workers in sessions of their own, so
    killing its process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _train_args(world8, judge, out, *more):
    return ["-m", "saga.cli", "train", "--config", str(CONFIGS / "synth" / "saga.yaml"), "device=cpu",
            f"data.root={world8}", f"model.judge={judge}", f"out_dir={out}", "data.image_size=64",
            "data.eval_batch_size=16", "dml.batch_size=8", "dml.m_per_class=2", "grpo.num_generations=2",
            "grpo.pairs_per_step=2", "grpo.max_completion_length=6", "optim.steps=8", "checkpoint_every=2",
            "keep_checkpoints=0", "eval_every=4", "log_every=1", "grpo.log_completions_every=1",
            "optim.lr_encoder=1e-3", "optim.lr_pooler=1e-2", "optim.lr_proxies_mult=10", *more]


def test_a_killed_two_process_run_resumes_to_the_weights_of_an_uninterrupted_one(world8, tiny_vlm_dir, tmp_path):
    _run(_train_args(world8, tiny_vlm_dir, tmp_path / "full"))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*TORCHRUN, *_train_args(world8, tiny_vlm_dir, killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "ckpt-000002" / "state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    for pid in [proc.pid, *_descendants(proc.pid)]:  # every process of the run, as a scheduler's kill -9 would
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # nothing of the run may go on writing
    assert not (killed / "test_metrics.json").exists(), "the run finished before it was killed"
    assert (killed / ".saga.lock").read_text(), "the killed run's lock is left behind"
    resumed = _run([*_train_args(world8, tiny_vlm_dir, killed), "--resume"])
    assert "did not end cleanly" in resumed.stderr + resumed.stdout, resumed.stderr[-2000:]  # the killed lock

    for name in ("encoder", "pooler", "loss", "optimizer"):
        a = load_file(tmp_path / "full" / "checkpoints" / "ckpt-000008" / f"{name}.safetensors")
        b = load_file(killed / "checkpoints" / "ckpt-000008" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name  # bit-identical
    full_metrics = json.loads((tmp_path / "full" / "test_metrics.json").read_text())
    assert json.loads((killed / "test_metrics.json").read_text()) == full_metrics


def test_a_two_process_run_writes_one_copy_of_every_file(world8, tiny_vlm_dir, tmp_path):
    _run(_train_args(world8, tiny_vlm_dir, tmp_path / "two"))
    cfg = load_config(CONFIGS / "synth" / "saga.yaml", _train_args(world8, tiny_vlm_dir, tmp_path / "one")[5:])
    train(cfg)

    def files(run):
        return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts)

    two, one = tmp_path / "two", tmp_path / "one"
    assert files(two) == files(one)
    assert len(list((two / "tensorboard").iterdir())) == 1  # one events file: rank 0's
    lines = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    train_steps = [line["step"] for line in lines if "loss" in line]
    assert train_steps == list(range(1, 9))  # one line per step, not one per rank
    completions = [json.loads(line) for line in (two / "completions.jsonl").read_text().splitlines()]
    assert len(completions) == 8 * 2  # rank 0's pair, G = 2 completions, every step
    env = json.loads((two / "environment.json").read_text())
    assert (env["world_size"], env["launcher"]) == (2, "torchrun")
    assert json.loads((one / "environment.json").read_text())["world_size"] == 1
