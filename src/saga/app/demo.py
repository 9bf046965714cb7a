"""`saga demo`: the paper's comparison on the synthetic world, on a laptop CPU, with an HTML report.

It renders the world (if missing), loads the shipped judge (assets/judge-tiny-long), runs the rows of
configs/synth/demo.yaml (pre-trained backbone, Proxy Anchor, Potential Field, SAGA, AGFF-Embed; one seed, CPU-sized
budgets), prints the table and writes ``<out>/report.html``: the table, Recall@K curves, training curves, what the
judge wrote about training pairs early and late in the SAGA run, the pooler's and the judge's attention over test
images, and a retrieval grid. The full benchmark is `saga benchmark`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saga.app.benchmark import format_results, load_table, row_config, run_table, write_report, write_results
from saga.app.report import AttentionExample, RetrievalRow
from saga.train.methods import METHODS

DEMO_TABLE = Path("configs/synth/demo.yaml")


def _token_grid(grid_thw: torch.Tensor, merge: int) -> tuple[int, int]:
    _, h, w = (int(v) for v in grid_thw)
    return h // merge, w // merge


@torch.no_grad()
def examples(run_dir: Path, judge: str, dataset, *, num_attention: int = 4, num_queries: int = 6,
             layers: list[int] = (-1,), max_new_tokens: int = 96, seed: int = 0, vocabulary=None):
    """Attention maps (pooler and judge) and a retrieval grid from a trained SAGA run's export."""
    from saga.app.run import TEST_EMBEDDINGS
    from saga.data.base import load_image
    from saga.errors import DataError
    from saga.eval import knn, load_embeddings
    from saga.judge import FrozenJudge
    from saga.models import embed_split, load_model, save_embeddings

    model = load_model(run_dir, device="cpu")
    test = dataset.test
    rng = np.random.default_rng(seed)
    labels = np.unique(test.labels)
    classes = rng.choice(labels, size=min(num_attention, len(labels)), replace=False)
    # One pair per example: two images of the same test class (the judge's attention is over pairs).
    pairs = [rng.choice(np.flatnonzero(test.labels == c), size=2, replace=False) for c in classes]
    images = [load_image(test.paths[i]) for pair in pairs for i in pair]
    pooled = model(**model.preprocessor(images))
    enc = pooled.features
    fj = FrozenJudge.load(judge, device="cpu", dtype="float32", dataset=dataset.name, vocabulary=vocabulary)
    rollout = fj.rollout(enc, num_generations=1, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
    judged = fj.score(enc, rollout, attention_layers=list(layers)).image_attention
    attention = []
    for k in range(0, len(images), 2):
        grid = _token_grid(enc.grid_thw[k], model.encoder.merge_size)
        n = enc.num_tokens[k]
        attention.append(AttentionExample(
            images[k], grid, pooled.attention[k, :n].float().numpy() if pooled.attention is not None else
            np.full(n, 1.0 / n), judged[k].float().numpy() if judged is not None else None,
            title=f"{test.class_names[int(test.labels[pairs[k // 2][0]])]} -- judge: "
                  f"{rollout.texts[k // 2].splitlines()[-1] if rollout.texts[k // 2] else '(empty)'}"))

    gallery = run_dir / TEST_EMBEDDINGS  # the run's final evaluation wrote it; a run from before that did not
    if not gallery.exists():
        save_embeddings(gallery, embed_split(model, test), model=str(run_dir / "export"), kind="model",
                        image_size=model.image_size)
    embeddings, labels = load_embeddings(gallery)
    if not np.array_equal(labels, test.labels):
        raise DataError(f"{gallery}: not the embeddings of {dataset.name}'s test split")
    _, idx = knn(embeddings, 5)
    retrieval = []
    for q in rng.choice(len(test), size=min(num_queries, len(test)), replace=False):
        name = test.class_names[int(test.labels[q])]
        retrieval.append(RetrievalRow(load_image(test.paths[q]), name, [
            (load_image(test.paths[j]), test.class_names[int(test.labels[j])], test.labels[j] == test.labels[q])
            for j in idx[q].tolist()]))
    return attention, retrieval


def run_demo(out_dir: str | Path = "runs/demo", table_path: str | Path = DEMO_TABLE, seed: int = 0) -> Path:
    """Run the demo table and write the report; returns the report's path."""
    from saga.data import load_dataset
    from saga.judge import judge_vocabulary

    if not Path(table_path).exists():
        raise FileNotFoundError(f"{table_path}: the demo table; run `saga demo` from the repository root")
    out_dir = Path(out_dir)
    table = load_table(table_path)
    results = run_table(table, [seed], out_dir)
    text = format_results(results)
    print("\n" + text)
    write_results(results, out_dir, f"saga demo --out {out_dir}", table)

    saga_cfg = next((cfg for cfg in (row_config(table, row, seed, out_dir) for row in table.rows)
                     if METHODS.get(cfg.method).needs_judge), None)  # the first row that reads the judge
    attention, retrieval = [], []
    if saga_cfg is not None:
        data = load_dataset(saga_cfg.data.dataset, saga_cfg.data.root)
        vocabulary = judge_vocabulary(saga_cfg.model.vocabulary, saga_cfg.model.judge, saga_cfg.data.dataset,
                                      saga_cfg.data.root)
        attention, retrieval = examples(Path(saga_cfg.out_dir), saga_cfg.model.judge, data,
                                        layers=saga_cfg.attention.layers,
                                        max_new_tokens=saga_cfg.grpo.max_completion_length, seed=seed,
                                        vocabulary=vocabulary)
    report = write_report(
        table, results, out_dir, seed, title="SAGA demo: the synthetic attribute world",
        attention=attention, retrieval=retrieval,
        notes=f"<p>Zero-shot retrieval on the 100 test classes (disjoint from the training classes), one seed, "
              f"CPU-sized budgets from <code>{table_path}</code>. A row \"SAGA w/o L_GRPO\" is SAGA with the "
              f"judge's policy gradient switched off: the difference to SAGA is what the judge's verdicts add. "
              f"AGFF-Embed keeps the judge's MLLM as the embedder (LoRA-adapted, one prompt per attribute), "
              f"at several times the inference cost of an encoder + pooler. "
              f"3 seeds and every ablation: <code>saga benchmark --config configs/synth/table-cpu.yaml --seeds 0 1 "
              f"2</code> (CPU) or <code>configs/synth/table.yaml</code> (GPU, the <code>small</code> judge).</p>")
    print(f"\nreport: {report}")
    return report
