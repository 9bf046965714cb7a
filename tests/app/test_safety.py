"""Nothing lost, nothing silent: non-finite steps, run-directory safety, and one error path for bad input.

Every bad input goes through `saga.cli.main` and must end in exit code 2 with `saga: error: <file>: <what>` and no
traceback; nothing of an earlier run is deleted by a run that fails its checks.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saga.app import rundir
from saga.app.run import train
from saga.cli import main
from saga.models import load_vlm

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROXY = str(CONFIGS / "synth" / "proxy_anchor.yaml")
SAGA = str(CONFIGS / "synth" / "saga.yaml")


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _judge(tiny_vlm_dir, tmp_path, name, edit=None):
    """A copy of the tiny judge, its weights changed by `edit(model)` (in place) and saved again."""
    out = tmp_path / name
    shutil.copytree(tiny_vlm_dir, out)
    if edit is not None:
        model, _ = load_vlm(out, device="cpu")
        with torch.no_grad():
            edit(model)
        model.save_pretrained(out)
    return out


# ---------------------------------------------------------------- non-finite steps
def test_a_judge_that_gives_nan_never_reaches_the_weights(tiny_overrides, tiny_vlm_dir, tmp_path, capsys, caplog):
    # Finite weights whose attention logits overflow: sampling goes on, but the log-probs (L_GRPO) and the
    # attention target (L_KL) are NaN. Every step is skipped; after 3 in a row the run stops with a clear error.
    def overflow(model):
        attn = model.model.language_model.layers[-1].self_attn
        attn.q_norm.weight.mul_(1e19)
        attn.k_norm.weight.mul_(1e19)

    judge = _judge(tiny_vlm_dir, tmp_path, "overflowing", overflow)
    args = ["train", "--config", SAGA, *tiny_overrides("saga", "optim.steps=6", "optim.max_skipped_steps=3",
                                                       "checkpoint_every=1"), f"model.judge={judge}"]
    assert main(args) == 2
    err = _error(capsys)
    assert "3 steps in a row had a non-finite loss" in err and "(step 3: loss terms grpo" in err
    assert "step 1: non-finite loss terms grpo" in caplog.text and "the update was skipped (1 in a row)" in caplog.text
    run = tmp_path / "run"
    lines = [line for line in _lines(run / "metrics.jsonl") if "skipped_steps" in line]
    assert [line["skipped_steps"] for line in lines] == [1, 2, 3]
    assert all(line["grad_norm"] is None for line in lines)  # non-finite values are logged as null
    # Nothing changed: every checkpoint holds the initial tower, bit for bit, and all of it is finite.
    initial = {f"tower.{k}": v for k, v in load_vlm(judge, device="cpu")[0].model.visual.state_dict().items()}
    for step in (1, 2):
        saved = load_file(run / "checkpoints" / f"ckpt-00000{step}" / "encoder.safetensors")
        assert all(torch.equal(saved[k], initial[k]) for k in initial)


def test_a_judge_with_nan_weights_is_refused_when_loaded(tiny_overrides, tiny_vlm_dir, tmp_path, capsys):
    judge = _judge(tiny_vlm_dir, tmp_path, "nan", lambda m: m.lm_head.weight[3, 5].fill_(float("nan")))
    assert main(["train", "--config", SAGA, *tiny_overrides(), f"model.judge={judge}"]) == 2
    err = _error(capsys)
    assert f"{judge}: 1 weight tensor(s) hold NaN or inf (lm_head.weight)" in err
    assert not (tmp_path / "run").exists()  # refused before the run folder was touched


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    from saga.errors import CheckpointError
    from saga.train.checkpoint import save_checkpoint

    good, bad = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(good.parameters())
    save_checkpoint(tmp_path, 1, {"encoder": good}, optimizer, {})
    with torch.no_grad():
        bad.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match=r"not saving step 2, whose weights are not finite \(encoder.weight\)"):
        save_checkpoint(tmp_path, 2, {"encoder": bad}, optimizer, {}, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000001", "latest"]


# ---------------------------------------------------------------- run directories
def test_a_failing_run_deletes_nothing_and_an_earlier_run_needs_overwrite(tiny_overrides, tmp_path, capsys):
    args = ["train", "--config", PROXY, *tiny_overrides("proxy_anchor")]
    assert main(args) == 0
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints")  # pruned, as users of the 8B preset will do
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    capsys.readouterr()

    assert main([*args, f"model.judge={tmp_path / 'typo'}"]) == 2  # a bad input: refused before anything is touched
    assert f"{tmp_path / 'typo'}: no such model directory" in _error(capsys)
    assert main(args) == 2  # earlier results: refused without --overwrite
    err = _error(capsys)
    assert "holds the results of an earlier run (metrics.jsonl" in err and "--overwrite" in err
    assert "--resume" not in err  # no checkpoint to resume from
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before

    assert main([*args, "--overwrite"]) == 0
    assert "--overwrite: deleting metrics.jsonl" in capsys.readouterr().out
    assert (run / "checkpoints" / "latest").is_file()


def test_a_second_run_into_the_same_folder_fails_at_once(tiny_overrides, tmp_path, capsys, caplog):
    args = ["train", "--config", PROXY, *tiny_overrides("proxy_anchor")]
    with rundir.RunLock(tmp_path / "run"):
        assert main(args) == 2
        assert "another saga run is writing to this folder" in _error(capsys)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    # A lock left by a killed run (its file, no process holding it) is stale: taken over, with a warning.
    (tmp_path / "run" / rundir.LOCK).write_text('{"pid": 123, "host": "gone"}')
    assert main(args) == 0
    assert "did not end cleanly" in caplog.text and not (tmp_path / "run" / rundir.LOCK).exists()


def test_resume_falls_back_to_the_newest_intact_checkpoint(tiny_config, tmp_path, caplog):
    cfg = tiny_config("proxy_anchor", "optim.steps=3", "checkpoint_every=1", "keep_checkpoints=0")
    full = train(cfg)["test_metrics"]
    ckpts = tmp_path / "run" / "checkpoints"
    encoder = ckpts / "ckpt-000003" / "encoder.safetensors"
    encoder.write_bytes(encoder.read_bytes()[:100])  # truncated, as a full disk leaves it
    resumed = train(cfg, resume=True)["test_metrics"]  # from ckpt-000002: step 3 is trained again
    assert "ckpt-000003: cannot restore the checkpoint" in caplog.text and "resuming from ckpt-000002" in caplog.text
    assert resumed == full
    lines = _lines(tmp_path / "run" / "metrics.jsonl")  # step 3 logged once, then the final evaluation
    assert [line["step"] for line in lines] == [1, 2, 3, 3] and "test/R@1" in lines[-1]


def test_resuming_a_finished_run_does_not_duplicate_its_final_line(tiny_config, tmp_path):
    cfg = tiny_config("proxy_anchor", "optim.steps=2")
    train(cfg)
    before = _lines(tmp_path / "run" / "metrics.jsonl")
    train(cfg, resume=True)
    after = _lines(tmp_path / "run" / "metrics.jsonl")
    assert [line["step"] for line in after] == [line["step"] for line in before]
    assert sum(any(k.startswith("test/") for k in line) for line in after) == \
        sum(any(k.startswith("test/") for k in line) for line in before)


def test_checkpoints_and_exports_have_the_permissions_of_other_outputs(tiny_config, tmp_path):
    train(tiny_config("proxy_anchor", "optim.steps=1"))
    run = tmp_path / "run"
    mode = (run / "metrics.jsonl").stat().st_mode & 0o777
    for file in [*run.glob("checkpoints/*/*.safetensors"), *run.glob("export/*")]:
        assert file.stat().st_mode & 0o777 == mode, file


def test_train_renders_a_missing_synthetic_world(tiny_overrides, tmp_path, monkeypatch):
    import saga.synth.generate as generate

    rendered = []
    real = generate.generate_world

    def small(out, **kw):  # the defaults (200 classes x 60 images) are too slow for a test; record them
        rendered.append(kw)
        return real(out, num_classes=6, images_per_class=4, size=64, seed=0, workers=1)

    monkeypatch.setattr(generate, "generate_world", small)
    world = tmp_path / "world-not-yet"
    assert main(["train", "--config", PROXY, *tiny_overrides("proxy_anchor"), f"data.root={world}"]) == 0
    assert rendered[0]["num_classes"] == 200 and (world / "world.json").is_file()


# ---------------------------------------------------------------- one error path
def test_bad_inputs_are_errors_naming_the_file(tiny_overrides, tiny_vlm_dir, synth_world, tmp_path, capsys):
    def fails(args, *expected):
        assert main(args) == 2, args
        err = _error(capsys)
        assert all(e in err for e in expected), (expected, err)

    train_args = ["train", "--config", PROXY, *tiny_overrides("proxy_anchor")]
    # the config: a directory, ranges, an override blamed as such
    fails(["train", "--config", str(tmp_path)], f"{tmp_path}: is a directory")
    fails([*train_args, "optim.steps=0"], "override 'optim.steps=0': optim.steps: 0 is out of range (must be >= 1)")
    fails([*train_args, "checkpoint_every=-1"], "checkpoint_every: -1 is out of range")
    fails([*train_args, "grpo.top_p=1.5"], "grpo.top_p: 1.5 is out of range (must be > 0 and <= 1)")
    # a judge: truncated weights, only pickle weights
    truncated = _judge(tiny_vlm_dir, tmp_path, "truncated")
    (truncated / "model.safetensors").write_bytes((truncated / "model.safetensors").read_bytes()[:1000])
    fails(["train", "--config", SAGA, *tiny_overrides(), f"model.judge={truncated}"],
          f"{truncated}: cannot load the model weights")
    pickled = _judge(tiny_vlm_dir, tmp_path, "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    for args in (["train", "--config", SAGA, *tiny_overrides(), f"model.judge={pickled}"],
                 ["eval", "--backbone", str(pickled), "--dataset", "synth", "--root", str(synth_world)]):
        fails(args, f"{pickled}: only pickle weights (pytorch_model.bin)")
    # an impossible out_dir (a path through a file)
    (tmp_path / "a-file").write_text("")
    fails([*train_args, f"out_dir={tmp_path / 'a-file' / 'run'}"], str(tmp_path / "a-file"))
    # embeddings: an object array (loading it would unpickle), one class only
    np.savez(tmp_path / "objects.npz", embeddings=np.array([[1.0], "x"], dtype=object), labels=np.arange(2))
    fails(["eval", "--embeddings", str(tmp_path / "objects.npz")], f"{tmp_path / 'objects.npz'}: ", "numeric")
    np.savez(tmp_path / "one.npz", embeddings=np.eye(3, dtype=np.float32), labels=np.zeros(3, dtype=int))
    fails(["eval", "--embeddings", str(tmp_path / "one.npz")], "one.npz: retrieval needs at least 2 classes")


def test_a_bad_image_in_a_dataloader_worker_is_an_error_naming_it(tiny_overrides, synth_world, tmp_path, capsys):
    world = tmp_path / "world"
    shutil.copytree(synth_world, world)
    bad = sorted((world / "images").rglob("*.jpg"))[-1]  # a test image: the final evaluation reads every one
    bad.write_bytes(b"not a jpeg")
    assert main(["train", "--config", PROXY, *tiny_overrides("proxy_anchor"), f"data.root={world}",
                 "data.num_workers=1"]) == 2
    err = _error(capsys)
    assert err.splitlines()[-1].startswith(f"saga: error: {bad}: cannot read image") and "Original" not in err


# ---------------------------------------------------------------- progress and provenance
def test_progress_prints_lines_when_not_on_a_terminal(tiny_overrides, monkeypatch, capsys):
    monkeypatch.setenv("SAGA_PROGRESS_SECONDS", "0")  # a line at every update
    assert main(["train", "--config", PROXY, *tiny_overrides("proxy_anchor")]) == 0
    err = capsys.readouterr().err
    assert "train proxy_anchor: 1/3 step (33 %)" in err and "left" in err and "embed test: 12/12 img (100 %)" in err


def test_the_git_commit_is_the_packages_own(tmp_path):
    import subprocess

    from saga.utils import git_commit

    def repo(root, package):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
            subprocess.run(["git", *args], cwd=root, check=True)
        return root / package

    assert git_commit(repo(tmp_path / "elsewhere", "site-packages/saga")) is None  # another repository's commit
    package = repo(tmp_path / "checkout", "src/saga")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True).stdout.strip()
    assert git_commit(package) == {"commit": head, "dirty": False}
    (package / "__init__.py").write_text("# changed")
    assert git_commit(package)["dirty"] is True


def test_a_full_disk_is_an_error_naming_the_file(tiny_overrides, tmp_path, monkeypatch, capsys):
    import errno

    from saga.app import run

    def full(cfg, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run, "dump_config", full)
    assert main(["train", "--config", PROXY, *tiny_overrides("proxy_anchor")]) == 2
    assert f"saga: error: {tmp_path / 'run' / 'config.yaml'}: No space left on device" in _error(capsys)
