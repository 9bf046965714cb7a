"""`saga` command line: parse arguments, call the library, print. No logic lives here."""

from __future__ import annotations

import argparse
import html
import json
import logging
import sys
from pathlib import Path

from saga.data import DATASETS
from saga.errors import SagaError


def _write_json(obj: dict | list, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------- data
def cmd_data_info(args: argparse.Namespace) -> int:
    from saga.data import load_dataset

    ds = load_dataset(args.dataset, args.root, split_file=args.split_file, check_counts=args.check_counts)
    info = ds.info()
    if args.json:
        print(json.dumps(info))
    else:
        for side in ("train", "test"):
            print(f"{side:5s}  classes {info[side]['classes']:6d}  images {info[side]['images']:8d}")
    return 0


# ---------------------------------------------------------------- eval / embed
def _split(args: argparse.Namespace):
    """The dataset split that `saga embed` / `saga eval` embed."""
    from saga.data import load_dataset

    if bool(args.backbone) == bool(args.model) or not (args.dataset and args.root):
        raise SystemExit(f"saga {args.command}: give --backbone or --model, with --dataset and --root")
    return getattr(load_dataset(args.dataset, args.root, check_counts=args.check_counts), args.split)


def _model(args: argparse.Namespace):
    """The RetrievalModel of --model (a saved model or run folder) or --backbone (a checkpoint's tower, mean
    pooling; 224 px unless --image-size)."""
    from saga.models import load_model
    from saga.utils import resolve_device

    return load_model(args.model or args.backbone, device=resolve_device(args.device), image_size=args.image_size,
                      dtype=args.dtype, trust_remote_code=args.trust_remote_code)


def cmd_embed(args: argparse.Namespace) -> int:
    from saga.models import embed_split, save_embeddings

    split = _split(args)
    model = _model(args)
    res = embed_split(model, split, batch_size=args.batch_size)
    save_embeddings(args.out, res, model=args.model or args.backbone, kind="model" if args.model else "backbone",
                    image_size=model.image_size)
    print(f"wrote {args.out}: {res.embeddings.shape[0]} x {res.embeddings.shape[1]}  "
          f"({res.images_per_s:.1f} images/s)")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import numpy as np

    from saga.eval import load_embeddings, search

    gallery, labels = load_embeddings(args.gallery)
    with np.load(args.gallery, allow_pickle=False) as f:
        record = {k: f[k].item() for k in ("model", "model_kind", "image_size") if k in f.files}
        paths = f["paths"].tolist() if "paths" in f.files else [f"#{i}" for i in range(len(labels))]
    if not (args.model or args.backbone):  # embed the queries as the gallery was embedded
        if record.get("model_kind") not in ("model", "backbone"):
            raise SystemExit(f"saga search: {args.gallery} does not say what embedded it; give --model or --backbone")
        setattr(args, record["model_kind"], record["model"])
        args.image_size = args.image_size or int(record["image_size"])
    queries = _model(args).embed(args.query, batch_size=args.batch_size).cpu().numpy()
    try:
        sims, idx = search(queries, gallery, args.k, backend=args.backend)
    except SagaError as e:
        raise type(e)(f"{args.gallery}: {e}") from None
    found = [{"query": q, "neighbours": [{"path": paths[j], "label": int(labels[j]), "similarity": float(s)}
                                          for s, j in zip(sims[i].tolist(), idx[i].tolist(), strict=True)]}
             for i, q in enumerate(args.query)]
    for hit in found:
        print(hit["query"])
        for rank, n in enumerate(hit["neighbours"], 1):
            print(f"  {rank:3d}  {n['similarity']:.4f}  label {n['label']:5d}  {n['path']}")
    _write_json(found, args.json)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from saga.eval import evaluate, load_embeddings
    from saga.eval.report import format_table

    if args.embeddings:
        emb, labels = load_embeddings(args.embeddings)
        name = Path(args.embeddings).stem
    else:
        from saga.models import embed_split

        split = _split(args)
        res = embed_split(_model(args), split, batch_size=args.batch_size)
        emb, labels = res.embeddings, res.labels
        name = str(args.model) if args.model else "pre-trained backbone"
        print(f"embedded {len(labels)} images at {res.images_per_s:.1f} images/s")
    try:
        metrics = evaluate(emb, labels, backend=args.backend, seed=args.seed)
    except SagaError as e:  # say which file held the bad embeddings
        raise type(e)(f"{args.embeddings or name}: {e}") from None
    print(format_table({name: metrics}))
    _write_json(metrics, args.json)
    return 0


# ---------------------------------------------------------------- synthetic world
def cmd_export(args: argparse.Namespace) -> int:
    from saga.app.export import export_run

    out = export_run(args.run, args.out, fmt=args.format, image_size=args.image_size)
    print(f"wrote {out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from saga.errors import ConfigError
    from saga.synth import WorldShift, generate_world

    try:
        shift = WorldShift(**{k: tuple(getattr(args, k)) for k in ("train_varied", "test_varied", "train_fixed")
                              if getattr(args, k) is not None})
    except ValueError as e:
        raise ConfigError(f"saga synth: {e}") from None
    out = generate_world(args.out, num_classes=args.classes, images_per_class=args.images_per_class,
                         size=args.size, seed=args.seed, preview=args.preview, workers=args.workers, shift=shift)
    print(f"wrote the synthetic world to {out}")
    return 0


# ---------------------------------------------------------------- judge
def cmd_judge_pretrain(args: argparse.Namespace) -> int:
    from saga.synth.pretrain import pretrain_judge

    summary = pretrain_judge(args.out, preset=args.preset, seed=args.seed, device=args.device,
                             steps=args.steps, save_dtype=args.save_dtype)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_judge_eval(args: argparse.Namespace) -> int:
    from saga.synth.judge_eval import evaluate_judge

    res = evaluate_judge(args.judge, dataset=args.dataset, root=args.root, split=args.split,
                         pairs=args.pairs, seed=args.seed, device=args.device, encoder=args.encoder,
                         vocabulary=vocabulary_arg(args.vocabulary))
    for k, v in res.items():
        print(f"{k:32s} {v:.4f}" if isinstance(v, float) else f"{k:32s} {v}")
    _write_json(res, args.json)
    return 0


# ---------------------------------------------------------------- training
def cmd_train(args: argparse.Namespace) -> int:
    from saga.app.run import train
    from saga.config import describe, load_config

    if args.help_config:
        print("\n".join(describe()))
        return 0
    if not args.config:
        raise SystemExit("saga train: --config is required")
    cfg = load_config(args.config, args.overrides)
    if args.resume and args.overwrite:
        raise SystemExit("saga train: --resume continues a run, --overwrite deletes it: give one")
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps(result["test_metrics"], indent=2))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from saga.app.benchmark import format_results, load_table, run_table, write_report, write_results

    table = load_table(args.config)
    command = "saga " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    runs = len(table.rows) * len(args.seeds)
    results = run_table(table, args.seeds, args.out, args.overrides,
                        on_result=lambda partial: write_results(partial, args.out, command, table, runs))
    path = write_results(results, args.out, command, table)
    report = write_report(table, results, args.out, args.seeds[0], title=f"saga benchmark: {args.config}",
                          notes=f"<p><code>{html.escape(command)}</code></p>", extra=args.overrides)
    print("\n" + format_results(results) + f"\n\nwrote {path} and {report}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from saga.app.demo import run_demo

    run_demo(args.out, args.table, seed=args.seed)
    return 0


def vocabulary_arg(values: list[str]) -> str | list[str]:
    """--vocabulary: one word (auto, none, or a file) stays a setting; several are the attribute names."""
    if len(values) == 1 and (values[0] in ("auto", "none") or Path(values[0]).is_file()):
        return values[0]
    return values


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    from saga.synth.presets import JUDGE_PRESETS

    p = argparse.ArgumentParser(prog="saga", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(q: argparse.ArgumentParser) -> None:
        which = q.add_mutually_exclusive_group()
        which.add_argument("--backbone", help="hub id or local path of a Qwen3-VL / Qwen2.5-VL checkpoint: its "
                           "vision tower with mean pooling")
        which.add_argument("--model", help="a trained model: a `saga train` run folder, its export/ or a `saga "
                           "export` folder (encoder + pooler)")
        q.add_argument("--image-size", type=int, help="images are resized to this many pixels a side (default: "
                       "224 for --backbone, the training size for --model)")
        q.add_argument("--batch-size", type=int, default=32)
        q.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
        q.add_argument("--dtype", default="auto", help="--backbone: float32, bfloat16 or auto (bf16 on GPU, fp32 "
                       "on CPU); --model keeps the dtype it was trained in")
        q.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (off by default)")

    def dataset_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--dataset", choices=DATASETS.names())
        q.add_argument("--root", help="dataset root folder")
        q.add_argument("--split", default="test", choices=["train", "test"])
        count_check(q)

    def count_check(q: argparse.ArgumentParser) -> None:
        q.add_argument("--no-count-check", dest="check_counts", action="store_false",
                       help="load a full official set whose image or class counts differ from the published ones "
                       "(with a warning); e.g. a copy with images held out on purpose")

    data = sub.add_parser("data", help="dataset utilities").add_subparsers(dest="data_command", required=True)
    q = data.add_parser("info", help="class and image counts of the zero-shot train/test split")
    q.add_argument("--dataset", required=True, choices=DATASETS.names())
    q.add_argument("--root", required=True)
    q.add_argument("--split-file", help="folder datasets: file listing train classes, one per line")
    count_check(q)
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=cmd_data_info)

    q = sub.add_parser("embed", help="embed a dataset split with a backbone or a trained model")
    model_args(q)
    dataset_args(q)
    q.add_argument("--out", required=True, help="output .npz with embeddings, labels, paths")
    q.set_defaults(func=cmd_embed)

    q = sub.add_parser("search", help="the nearest gallery images of query images (a `saga embed` .npz)")
    q.add_argument("query", nargs="+", help="query image files")
    q.add_argument("--gallery", required=True, help="a `saga embed` .npz: embeddings, labels and paths")
    q.add_argument("-k", type=_positive, default=5, help="neighbours per query")
    model_args(q)
    q.add_argument("--backend", default="torch", choices=["torch", "faiss"], help="kNN backend")
    q.add_argument("--json", help="write the neighbours to this JSON file")
    q.set_defaults(func=cmd_search)

    q = sub.add_parser("eval", help="zero-shot retrieval metrics from embeddings, a backbone or a trained model")
    q.add_argument("--embeddings", help=".npz with 'embeddings' (N x D) and 'labels' (N)")
    model_args(q)
    dataset_args(q)
    q.add_argument("--backend", default="torch", choices=["torch", "faiss"], help="kNN backend")
    q.add_argument("--seed", type=int, default=0, help="k-means seed for NMI")
    q.add_argument("--json", help="write the metrics to this JSON file")
    q.set_defaults(func=cmd_eval)

    q = sub.add_parser("export", help="a trained run as a self-contained model folder (safetensors or ONNX)")
    q.add_argument("run", help="a `saga train` run folder (or its export/)")
    q.add_argument("--out", required=True, help="the folder to write")
    q.add_argument("--format", default="safetensors", choices=["safetensors", "onnx"],
                   help="safetensors: for saga.load_model; onnx: encoder + pooler for ONNX Runtime, no torch needed")
    q.add_argument("--image-size", type=int, help="onnx: the fixed input side in pixels (default: the training size)")
    q.set_defaults(func=cmd_export)

    q = sub.add_parser("synth", help="render the synthetic attribute world (CUB_200_2011 layout)")
    q.add_argument("--out", required=True)
    q.add_argument("--classes", type=int, default=200)
    q.add_argument("--images-per-class", type=int, default=60)
    q.add_argument("--size", type=int, default=128, help="image side in pixels")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--preview", action="store_true", help="also write a contact sheet of one family")
    q.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    q.add_argument("--train-varied", nargs="+", metavar="ATTR",
                   help="attributes that may separate siblings inside training families (default: all)")
    q.add_argument("--test-varied", nargs="+", metavar="ATTR",
                   help="attributes that may separate siblings inside test families (default: all)")
    q.add_argument("--train-fixed", nargs="+", metavar="ATTR",
                   help="attributes held fixed across all training classes (default: none)")
    q.set_defaults(func=cmd_synth)

    judge = sub.add_parser("judge", help="the frozen MLLM judge").add_subparsers(dest="judge_command", required=True)
    q = judge.add_parser("pretrain", help="build and pretrain a small Qwen3-VL judge on random attribute pairs")
    q.add_argument("--out", required=True)
    q.add_argument("--preset", default="tiny", choices=JUDGE_PRESETS.names(),
                   help="tiny: 10 CPU minutes; tiny-long: 25 CPU minutes, reads every attribute; small: a GPU")
    q.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="auto")
    q.add_argument("--save-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of the saved weights (bfloat16: half the size)")
    q.set_defaults(func=cmd_judge_pretrain)
    q = judge.add_parser("eval", help="verdict accuracy of a judge on pairs of a dataset split")
    q.add_argument("--judge", required=True, help="judge directory or hub id")
    q.add_argument("--encoder", help="a `saga train` run (or its export/): the judge reads the images through its "
                   "trained tower")
    q.add_argument("--dataset", default="synth", choices=DATASETS.names())
    q.add_argument("--root", required=True)
    q.add_argument("--split", default="test", choices=["train", "test"])
    q.add_argument("--pairs", type=int, default=200)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="auto")
    q.add_argument("--vocabulary", nargs="+", default=["auto"], metavar="NAME",
                   help="the attributes the prompt names: auto (the dataset's), none, a file, or the names")
    q.add_argument("--json", help="write the results to this JSON file")
    q.set_defaults(func=cmd_judge_eval)

    q = sub.add_parser("train", help="train a retrieval model with the config's method (saga, the baselines...)")
    q.add_argument("--config", help="YAML config file")
    q.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    q.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5 method=proxy_anchor")
    q.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint")
    q.add_argument("--overwrite", action="store_true", help="delete the results of an earlier run in out_dir first")
    q.set_defaults(func=cmd_train)

    q = sub.add_parser("benchmark", help="train and evaluate every row of a results table over several seeds")
    q.add_argument("--config", required=True, help="table YAML (e.g. configs/synth/table.yaml)")
    q.add_argument("--seeds", type=int, nargs="+", default=[0])
    q.add_argument("--out", default="runs/benchmark", help="folder of the runs and results.json / results.md")
    q.add_argument("overrides", nargs="*", help="dotted overrides applied to every row, e.g. device=cuda")
    q.set_defaults(func=cmd_benchmark)

    q = sub.add_parser("demo", help="the CPU demo: synthetic world, five methods, table and HTML report")
    q.add_argument("--out", default="runs/demo")
    q.add_argument("--table", default="configs/synth/demo.yaml", help="the rows to run")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_demo)
    return p


def error_message(e: BaseException) -> str:
    """What `saga: error:` prints for an expected failure: the message, with the file it concerns."""
    if isinstance(e, OSError) and not isinstance(e, SagaError):  # a filesystem error: name the file
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        return f"{where}: {e.strerror or e}" if where else str(e)
    text = str(e)
    # A DataLoader worker re-raises the error it caught with the worker's whole traceback as the message: keep the
    # original message, the text after the last "<ErrorType>: ".
    if "Original Traceback" in text:
        text = text.rsplit(f"{type(e).__name__}: ", 1)[-1].strip()
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(format="saga: %(levelname)s: %(message)s", level=logging.WARNING)
    try:
        return args.func(args)
    except (OSError, SagaError) as e:  # bad input, a file or the filesystem: say what and where, no traceback
        print(f"saga: error: {error_message(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
