"""evaluate(): the metric dict both backends give, input checks, and `saga eval` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saga.cli import main
from saga.errors import DataError
from saga.eval import evaluate

KEYS = ["R@1", "R@2", "R@4", "R@8", "MAP@R", "RP", "NMI"]


def _clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(8), 6)
    x = rng.standard_normal((8, 12))[labels] + 0.9 * rng.standard_normal((48, 12))
    return x.astype(np.float32), labels


def test_keys_types_and_backends_agree():
    x, labels = _clusters()
    got = {b: evaluate(x, labels, backend=b) for b in ("torch", "faiss")}
    assert list(got["torch"]) == KEYS
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in got["torch"].values())
    assert got["faiss"] == got["torch"]
    assert got["torch"]["R@1"] <= got["torch"]["R@2"] <= got["torch"]["R@4"] <= got["torch"]["R@8"]
    # a torch tensor and string class names give the same result
    same = evaluate(torch.from_numpy(x), np.array([f"c{c}" for c in labels]), seed=0)
    assert same == got["torch"]


def test_hand_computed_example():
    # The 2-D example worked out in test_metrics.py: R@1 0.4, R@2 0.8, R@4 1.0, MAP@R 0.25, RP 0.3. NMI < 1: the
    # chord between the class-B points (28 and 95 degrees) crosses the class-A chord 10-50, so no k-means
    # partition (convex cells) can reproduce the classes.
    rad = np.deg2rad([0.0, 10.0, 50.0, 28.0, 95.0, 200.0])
    x = np.stack([np.cos(rad), np.sin(rad)], axis=1)
    got = evaluate(x, [0, 0, 0, 1, 1, 2], ks=(1, 2, 4))
    assert list(got) == ["R@1", "R@2", "R@4", "MAP@R", "RP", "NMI"]
    assert [got[k] for k in ["R@1", "R@2", "R@4", "MAP@R", "RP"]] == pytest.approx([0.4, 0.8, 1.0, 0.25, 0.3])
    assert 0.0 <= got["NMI"] < 1.0


def test_bad_input():
    x, labels = _clusters()
    with pytest.raises(DataError, match="48 embeddings but 47 labels"):
        evaluate(x, labels[:-1])
    with pytest.raises(DataError, match="1-D"):
        evaluate(x, labels[:, None])
    with pytest.raises(DataError, match="at least 2 items"):
        evaluate(x[:1], labels[:1])


def test_cli_eval_end_to_end(tmp_path, capsys):
    x, labels = _clusters()
    npz, out = tmp_path / "emb.npz", tmp_path / "out" / "metrics.json"
    np.savez(npz, embeddings=x, labels=labels)
    assert main(["eval", "--embeddings", str(npz), "--json", str(out), "--backend", "faiss"]) == 0
    written = json.loads(out.read_text())
    assert written == evaluate(x, labels)
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["method", *KEYS]
    assert row.split() == ["emb", *(f"{100 * written[k]:.1f}" for k in KEYS)]


def test_cli_eval_bad_files(tmp_path, capsys):
    x, labels = _clusters()
    x[5] = np.nan
    npz = tmp_path / "nan.npz"
    np.savez(npz, embeddings=x, labels=labels)
    assert main(["eval", "--embeddings", str(npz)]) == 2
    assert f"{npz}: embeddings hold NaN" in capsys.readouterr().err
    text = tmp_path / "notes.npz"
    text.write_text("not numpy")
    assert main(["eval", "--embeddings", str(text)]) == 2
    assert f"{text}: not a readable .npz file" in capsys.readouterr().err
    npy = tmp_path / "emb.npy"
    np.save(npy, x)
    assert main(["eval", "--embeddings", str(npy)]) == 2
    assert f"{npy}: a single .npy array" in capsys.readouterr().err


def test_sets_smaller_than_k_read_every_other_item():
    # 4 items, classes a a b b: 1-D points 0, 1, 10, 11. R@1 = 1 (each nearest is its classmate), and R@8 over the
    # 3 other items is 1 as well; with K >= N - 1 the neighbour list is the whole database.
    emb = np.array([[1.0, 0.0], [0.995, 0.0998], [0.0, 1.0], [0.0998, 0.995]])
    m = evaluate(emb, np.array([0, 0, 1, 1]))
    assert m["R@1"] == 1.0 and m["R@8"] == 1.0 and m["MAP@R"] == 1.0
