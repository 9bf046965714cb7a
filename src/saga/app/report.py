"""A self-contained HTML report (one file, images inlined): results table, Recall@K curves, training curves, what
the judge wrote about training pairs, attention maps and a retrieval grid. Pure rendering: the caller (e.g.
`saga.app.demo`) gathers the data.

Attention maps: a Qwen-VL merged token covers one 2x2 window of 16 px patches, and the tokens of an image come in
raster order of those windows, so token t of an image with a merged grid of (h, w) sits at row t // w, column t % w.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

TABLE_KEYS = ("R@1", "R@2", "R@4", "R@8", "MAP@R", "RP", "NMI")


@dataclass
class AttentionExample:
    """One test image with the pooler's and (optionally) the judge's attention over its merged tokens."""

    image: Image.Image
    grid: tuple[int, int]  # merged-token grid (rows, columns)
    pooler: np.ndarray  # (rows * columns,) weights
    judge: np.ndarray | None = None
    title: str = ""


@dataclass
class JudgeSample:
    """One sampled completion of a training step: the pair's two images and what the judge wrote about them."""

    step: int
    image_a: Image.Image
    image_b: Image.Image
    same: bool  # the truth: the two images are of one class
    text: str
    verdict: bool | None  # parsed from the text: True = "same", None = no verdict
    reward: float
    caption: str = ""  # e.g. the two classes


@dataclass
class RetrievalRow:
    """A query image and its nearest neighbours, each (image, class name, same class as the query?)."""

    query: Image.Image
    query_class: str
    neighbours: list[tuple[Image.Image, str, bool]] = field(default_factory=list)


def _png(fig_or_image) -> str:
    buf = io.BytesIO()
    if isinstance(fig_or_image, Image.Image):
        fig_or_image.save(buf, format="PNG")
    else:
        fig_or_image.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig_or_image)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(src: str, width: int | None = None, style: str = "") -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{src}"{w} style="{style}">'


def _table(rows: dict[str, dict[str, float]], stds: dict[str, dict[str, float]] | None) -> str:
    keys = [k for k in TABLE_KEYS if any(k in m for m in rows.values())]
    best = {k: max(m.get(k, -1) for m in rows.values()) for k in keys}
    out = ["<table><tr><th>method</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"]
    for name, m in rows.items():
        cells = []
        for k in keys:
            if k not in m:
                cells.append("<td>-</td>")
                continue
            s = f"{100 * m[k]:.1f}"
            if stds and k in stds.get(name, {}):
                s += f" &plusmn; {100 * stds[name][k]:.1f}"
            cells.append(f"<td><b>{s}</b></td>" if m[k] == best[k] else f"<td>{s}</td>")
        out.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return "\n".join(out + ["</table>"])


def _recall_curves(rows: dict[str, dict[str, float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, m in rows.items():
        ks = sorted(int(k[2:]) for k in m if k.startswith("R@"))
        ax.plot(ks, [100 * m[f"R@{k}"] for k in ks], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _img(_png(fig))


def _training_curves(curves: dict[str, list[dict]], keys: Sequence[str], columns: int = 3) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in row for rows in curves.values() for row in rows)]
    if not keys:
        return "<p>No training logs.</p>"
    columns = min(columns, len(keys))
    grid_rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(3.6 * columns, 3 * grid_rows), squeeze=False)
    colour = {name: f"C{i}" for i, name in enumerate(curves)}  # one colour per run in every panel
    for ax, key in zip(axes.flat, keys):
        for name, rows in curves.items():
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), label=name, color=colour[name])
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=min(4, len(curves)), fontsize=8,
               bbox_to_anchor=(0.5, 1.0))  # above the panels; savefig's tight bounding box keeps it
    return _img(_png(fig))


def _heatmap(image: Image.Image, weights: np.ndarray, grid: tuple[int, int], size: int = 160) -> Image.Image:
    """The image with the attention weights (upsampled from the token grid) blended over it in red."""
    rows, cols = grid
    w = np.asarray(weights, dtype=np.float64).reshape(rows, cols)
    w = (w - w.min()) / (np.ptp(w) + 1e-12)
    heat = Image.fromarray(np.uint8(255 * w)).resize((size, size), Image.NEAREST)
    base = image.convert("RGB").resize((size, size))
    red = Image.new("RGB", (size, size), (255, 0, 0))
    return Image.composite(red, base, heat.point(lambda v: int(v * 0.6)))


def _attention(examples: Sequence[AttentionExample]) -> str:
    if not examples:
        return "<p>No attention maps (the run has no attention pooler).</p>"
    cells = []
    for ex in examples:
        parts = [_img(_png(ex.image.convert("RGB").resize((160, 160)))),
                 _img(_png(_heatmap(ex.image, ex.pooler, ex.grid)))]
        captions = ["image", "pooler"]
        if ex.judge is not None:
            parts.append(_img(_png(_heatmap(ex.image, ex.judge, ex.grid))))
            captions.append("judge")
        figs = "".join(f"<figure>{p}<figcaption>{c}</figcaption></figure>" for p, c in zip(parts, captions))
        cells.append(f"<div class='att'><div>{html.escape(ex.title)}</div>{figs}</div>")
    return "\n".join(cells)


def _verdict(verdict: bool | None) -> str:
    return "none" if verdict is None else ("same" if verdict else "different")


def _judge_samples(samples: Sequence[JudgeSample]) -> str:
    """Per logged step: each pair's two images side by side, the completion, its verdict against the truth and
    its reward."""
    if not samples:
        return "<p>No logged completions (no row reads the judge, or grpo.log_completions_every is 0).</p>"
    out, step = [], None
    for x in samples:
        if x.step != step:
            step = x.step
            out.append(f"<h3>step {step}</h3>")
        right = x.verdict is not None and x.verdict == x.same
        colour = "#1a7f37" if right else "#cf222e"
        images = "".join(_img(_png(im.convert("RGB").resize((96, 96))), style="margin-right:4px")
                         for im in (x.image_a, x.image_b))
        out.append(
            f"<div class='judge'><div>{images}<br><small>{html.escape(x.caption)}</small></div>"
            f"<div><small>truth: {'same class' if x.same else 'different classes'}; "
            f"<span style='color:{colour}'>verdict: {_verdict(x.verdict)}</span>; reward {x.reward:g}</small>"
            f"<pre>{html.escape(x.text)}</pre></div></div>")
    return "\n".join(out)


def _short(name: str) -> str:
    """A class's caption under a thumbnail: its id where the name has one ("042.Long_Name" -> "042")."""
    head, dot, _ = name.partition(".")
    return head if dot and head.isdigit() else name[:24]


def _retrieval(rows: Sequence[RetrievalRow]) -> str:
    """One block per query: its class name, then the query and its neighbours in one row of fixed-size cells
    (captions are class ids, full names on hover), so long class names cannot push the neighbours off the page."""
    out = []
    for r in rows:
        cells = [f"<td title='{html.escape(r.query_class, quote=True)}'>"
                 f"{_img(_png(r.query.convert('RGB').resize((96, 96))), style='border:3px solid #555')}"
                 f"<br><small>query</small></td>"]
        for img, name, ok in r.neighbours:
            colour = "#1a7f37" if ok else "#cf222e"
            mark = "&#10003;" if ok else "&#10007;"
            cells.append(f"<td title='{html.escape(name, quote=True)}'>"
                         f"{_img(_png(img.convert('RGB').resize((96, 96))), style=f'border:3px solid {colour}')}"
                         f"<br><small style='color:{colour}'>{mark} {html.escape(_short(name))}</small></td>")
        out.append(f"<div><small>{html.escape(r.query_class)}</small>"
                   f"<table class='grid'><tr>{''.join(cells)}</tr></table></div>")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child{text-align:left}table.grid{margin:2px 0 1em}
table.grid td{border:none;text-align:center;vertical-align:top;width:104px;padding:2px}
.att{display:inline-block;margin:0 1em 1em 0;font-size:12px}figure{display:inline-block;margin:2px}
figcaption{text-align:center;font-size:11px}pre{background:#f6f8fa;padding:8px;overflow-x:auto}
.judge{display:flex;gap:1em;align-items:flex-start;margin-bottom:1em}.judge pre{margin:4px 0;font-size:11px}
"""


def write_report(path: str | Path, *, title: str, table: dict[str, dict[str, float]],
                 stds: dict[str, dict[str, float]] | None = None, curves: dict[str, list[dict]] | None = None,
                 curve_keys: Sequence[str] = ("loss", "dml/loss", "kl/loss", "reward_mean", "verdict_accuracy",
                                              "frac_reward_zero_std"),
                 attention: Sequence[AttentionExample] = (), retrieval: Sequence[RetrievalRow] = (),
                 judge_samples: Sequence[JudgeSample] = (), judge_source: str = "", notes: str = "") -> Path:
    """Write the report to `path` (one HTML file, every figure inlined as PNG) and return the path.

    `curve_keys` are logged metric names. L_GRPO's own value is left out by default: with group-centred advantages
    and one update per rollout it is ~0 whatever the encoder learns; reward_mean and verdict_accuracy show GRPO.
    `judge_samples`: sampled completions of training pairs (early and late in a run), `judge_source` says whose."""
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<div>{notes}</div>" if notes else "",
        "<h2>Zero-shot retrieval on the test classes</h2>", _table(table, stds),
        "<h2>Recall@K</h2>", _recall_curves(table),
        "<h2>Training curves</h2>", _training_curves(curves or {}, curve_keys),
        "<h2>What the judge wrote</h2>",
        f"<p>Completions sampled during training (the rollouts L_GRPO is computed from) for a few training pairs "
        f"early and late in the run{': ' + html.escape(judge_source) if judge_source else ''}. Reward 1 for a "
        f"verdict that matches the truth, else 0.</p>", _judge_samples(judge_samples),
        "<h2>Attention over image tokens</h2>",
        "<p>Red = weight of a merged token (one 2x2 window of patches). The pooler's weights define the embedding; "
        "the judge's are its attention from the verdict tokens, the L_KL target.</p>", _attention(attention),
        "<h2>Retrieval</h2><p>Each row: a test query (grey border) and its 5 nearest neighbours, captioned with "
        "their class ids (hover for the full name); green = same class.</p>", _retrieval(retrieval),
    ]
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)
    return path
