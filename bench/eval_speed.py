"""Speed, peak memory and agreement of `saga.eval.evaluate` with the torch and FAISS kNN backends.

Data: 50,000 x 512 synthetic embeddings, 1,000 classes x 50: a random Gaussian centre per class plus Gaussian noise
(``--noise`` 3.0 gives Recall@1 near 0.6, a realistic difficulty). All metrics: R@1/2/4/8, MAP@R, RP, NMI.

Each backend runs in its own subprocess, so its peak resident memory (``ru_maxrss``, the honest number: it counts
torch's and FAISS's native allocations, which ``tracemalloc`` does not see) is its own. The worker times
``evaluate()`` itself; to get the stage times and the neighbour lists for the agreement check it wraps the ``knn``
and ``nmi`` functions that ``evaluate`` calls. Targets: under 30 s and 4 GiB per backend on a 2-core CPU machine.

    python bench/eval_speed.py [--out bench/results/eval_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_SECONDS = 30.0
TARGET_GIB = 4.0
BACKENDS = ("torch", "faiss")


def make_data(classes: int, per_class: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(classes), per_class))  # shuffled: no class-ordered rows
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    x = centres[labels]
    x += noise * rng.standard_normal(x.shape, dtype=np.float32)
    return x, labels


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: less sensitive than wall time to other users' load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(backend: str, data: Path, result: Path) -> None:
    """Run evaluate() once; write its metrics, timings, peak RSS and the neighbour indices next to `result`."""
    import saga.eval as ev

    with np.load(data) as f:
        x, labels = f["embeddings"], f["labels"]
    rss_before = _peak_rss_gib()
    stages: dict[str, float] = {}
    recorded: dict[str, np.ndarray] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            stages[name] = time.perf_counter() - t0
            if name == "knn_s":
                recorded["idx"] = out[1].numpy()
            return out
        return wrapper

    ev.knn, ev.nmi = timed("knn_s", ev.knn), timed("nmi_s", ev.nmi)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    metrics = ev.evaluate(x, labels, backend=backend, seed=0)
    seconds, cpu_seconds = time.perf_counter() - t0, _cpu_seconds() - cpu0
    np.save(result.with_suffix(".idx.npy"), recorded["idx"])
    result.write_text(json.dumps({
        "backend": backend, "seconds": seconds, "cpu_seconds": cpu_seconds, "stages": stages, "metrics": metrics,
        "peak_rss_gib": _peak_rss_gib(), "rss_after_load_gib": rss_before, "k": int(recorded["idx"].shape[1]),
    }))


def agreement(idx: dict[str, np.ndarray], metrics: dict[str, dict[str, float]]) -> dict:
    a, b = idx["torch"], idx["faiss"]
    same_sets = np.mean([set(r) == set(s) for r, s in zip(a.tolist(), b.tolist())])
    return {
        "identical_entries": float((a == b).mean()),
        "identical_rows": float((a == b).all(axis=1).mean()),
        "identical_neighbour_sets": float(same_sets),
        "max_metric_abs_diff": max(abs(metrics["torch"][k] - metrics["faiss"][k]) for k in metrics["torch"]),
        "metric_abs_diff": {k: abs(metrics["torch"][k] - metrics["faiss"][k]) for k in metrics["torch"]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/eval_speed.json")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--noise", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.result)
        return

    from saga.eval.report import format_table
    from saga.utils import environment

    x, labels = make_data(args.classes, args.per_class, args.dim, args.noise, args.seed)
    runs, idx = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        np.savez(data, embeddings=x, labels=labels)
        del x, labels
        for backend in BACKENDS:
            result = Path(tmp) / f"{backend}.json"
            subprocess.run([sys.executable, __file__, "--worker", backend, "--data", str(data),
                            "--result", str(result)], check=True)
            runs[backend] = json.loads(result.read_text())
            idx[backend] = np.load(result.with_suffix(".idx.npy"))
    agree = agreement(idx, {b: r["metrics"] for b, r in runs.items()})

    print(f"{args.classes * args.per_class} x {args.dim} embeddings, {args.classes} classes, "
          f"k = {runs['torch']['k']} neighbours")
    for b, r in runs.items():
        ok = r["seconds"] < TARGET_SECONDS and r["peak_rss_gib"] < TARGET_GIB
        st = "  ".join(f"{name[:-2]} {v:.1f} s" for name, v in r["stages"].items())
        print(f"{b:6s} {r['seconds']:6.1f} s ({st}; CPU time {r['cpu_seconds']:.1f} s)  "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB (after loading {r['rss_after_load_gib']:.2f})  "
              f"{'within' if ok else 'MISSES'} target")
    print(format_table({b: r["metrics"] for b, r in runs.items()}))
    print(f"agreement: identical neighbour entries {agree['identical_entries']:.6f}, rows "
          f"{agree['identical_rows']:.6f}, sets {agree['identical_neighbour_sets']:.6f}; "
          f"largest metric difference {agree['max_metric_abs_diff']:.2e}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: getattr(args, k) for k in ("classes", "per_class", "dim", "noise", "seed")}
    # The machine may be shared: the load average says how much the timings can be trusted.
    env = environment() | {"cpu_count": os.cpu_count(), "load_average_1_5_15_min": os.getloadavg()}
    out.write_text(json.dumps({
        "config": config, "targets": {"seconds": TARGET_SECONDS, "peak_rss_gib": TARGET_GIB},
        "backends": runs, "agreement": agree, "environment": env,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
