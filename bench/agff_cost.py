"""What AGFF-Embed costs at inference beside SAGA's deployed model: images per second and peak memory.

SAGA deploys the vision tower + a pooler (the MLLM is dropped); AGFF-Embed deploys the whole MLLM and reads each
image under K prompts (docs/method.md, "AGFF-Embed"). Both embed the same random images of `--image-size` pixels,
in batches of `--batch`, under `torch.inference_mode`, each model in its own subprocess, so that its peak memory
is its own: peak RSS (`ru_maxrss`) on the CPU, `torch.cuda.max_memory_allocated` on a GPU.

    python bench/agff_cost.py                                     # the tiny judge on the CPU (assets/judge-tiny-long)
    python bench/agff_cost.py --model 8b --device cuda            # a random Qwen3-VL-8B (bench/geometry.py), bf16

Rows: "SAGA: tower + attention pooler", and "AGFF-Embed, K prompts" for each `--prompts` K (LoRA adapters of rank
8 left unmerged, as trained, when peft is installed). The tiny judge's prompts are those of configs/synth/agff.yaml
(the world's attribute names); the 8B's are the natural-language defaults with CUB's 28 attribute groups. Also
written: LLM tokens per image, parameters in the deployed model, and for each AGFF row its ratio to SAGA.
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
import torch

ROOT = Path(__file__).resolve().parents[1]
# CUB-200-2011's attribute groups, in the order of its attributes.txt (28 groups of 312 attributes).
CUB_GROUPS = ("bill_shape wing_color upperparts_color underparts_color breast_pattern back_color tail_shape "
              "upper_tail_color head_pattern breast_color throat_color eye_color bill_length forehead_color "
              "under_tail_color nape_color belly_color wing_shape size shape back_pattern tail_pattern belly_pattern "
              "primary_color leg_color bill_color crown_color wing_pattern").split()
LORA = {"kind": "lora", "rank": 8, "alpha": 16.0, "dropout": 0.0,
        "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "attn.qkv",
                    "attn.proj", "linear_fc1", "linear_fc2"]}


def prompts_for(model: str, k: int) -> list[str]:
    """K prompts as the presets write them: the synthetic world's (tiny judge) or natural language (8B)."""
    if model == "tiny":
        from saga.synth.schema import ATTRIBUTE_NAMES

        names = list(ATTRIBUTE_NAMES)
        first, template = "bird:", "{aspect_name}:"
    else:
        names = CUB_GROUPS
        first, template = ("Summarize the bird in the image in one word.",
                           "Describe the {aspect} of the bird in the image in one word.")
    if k - 1 > len(names):
        raise SystemExit(f"--prompts {k}: at most {len(names) + 1} for --model {model}")
    return [first] + [template.format(aspect=n.replace("_", " "), aspect_name=n) for n in names[:k - 1]]


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _build(args, kind: str, k: int):
    """The deployed model of `kind` ("saga" or "agff") and its parameter count."""
    from saga.models import AgffModel, AttentionPooler, ImagePreprocessor, RetrievalModel, VisionEncoder
    from saga.models.agff import AdaptiveFusion, apply_trainable

    device = torch.device(args.device)
    if args.model == "tiny":
        from saga.models import load_vlm

        vlm, processor = load_vlm(args.judge, device=args.device, dtype=args.dtype)
    else:
        sys.path.insert(0, str(ROOT / "bench"))
        from geometry import build_from_config

        dtype = torch.bfloat16 if args.dtype in ("auto", "bfloat16") else torch.float32
        # The local tokenizer learns its merges from the prompts, so that a word is about one token, as with Qwen's
        # own tokenizer (a byte-level one with no merges would make each prompt 3-4x longer).
        vlm, processor = build_from_config(args.geometry, dtype=dtype, device=device, image_size=args.image_size,
                                           corpus=prompts_for("8b", len(CUB_GROUPS) + 1) * 4)
    preprocessor = ImagePreprocessor(processor, args.image_size)
    if kind == "saga":  # the tower and an attention pooler; the LLM is dropped at deployment
        encoder = VisionEncoder(vlm.model.visual)
        vlm.model.visual = None
        del vlm
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = RetrievalModel(encoder, AttentionPooler(encoder.out_dim).to(device), preprocessor)
        lora = False
    else:
        lora = args.lora
        if lora:
            try:
                apply_trainable(vlm, LORA)
            except Exception as e:  # peft missing: the base model alone (the adapters' cost is small)
                print(f"no LoRA adapters ({e}); measuring the base MLLM", file=sys.stderr)
                lora = False
        prompts = prompts_for(args.model, k)
        fusion = AdaptiveFusion(vlm.config.text_config.hidden_size, len(prompts)).to(device)
        model = AgffModel(vlm, processor, prompts, fusion, preprocessor, base="random", fingerprint="",
                          trainable=LORA, images_per_pass=args.images_per_pass)
    params = sum(p.numel() for p in model.parameters())
    return model.eval(), params, lora


def worker(args, kind: str, k: int, result: Path) -> None:
    from PIL import Image

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rss_start = _peak_rss_gib()
    model, params, lora = _build(args, kind, k)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (args.image_size, args.image_size, 3), dtype=np.uint8))
              for _ in range(args.batch)]
    inputs = model.preprocessor(images)
    tokens = None
    if kind == "agff":
        grid = inputs["image_grid_thw"][0]
        packed = model.packed_prompts(grid)
        separate = model._prompt_rows(int(grid.prod()) // model.vlm.config.vision_config.spatial_merge_size ** 2)
        # read once per image: the shared start once, then each prompt's own tokens (packed)
        tokens = {"per_image": len(packed.ids), "unpacked_per_image": sum(len(r) for r in separate),
                  "prompts": k}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(args.repeats):
            emb = model(**inputs).embedding
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = args.batch * args.repeats
    result.write_text(json.dumps({
        "kind": kind, "prompts": k if kind == "agff" else None, "lora": lora, "parameters": params,
        "embedding_dim": int(emb.shape[-1]), "llm_tokens": tokens, "images": n, "seconds": seconds,
        "images_per_s": n / seconds, "cpu_seconds_per_image": cpu / n,
        "peak_rss_gib": _peak_rss_gib(), "rss_at_start_gib": rss_start,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "8b"], default="tiny")
    p.add_argument("--judge", default=str(ROOT / "assets" / "judge-tiny-long"), help="--model tiny: its checkpoint")
    p.add_argument("--geometry", default="qwen3vl-8b", help="--model 8b: a config of configs/models/")
    p.add_argument("--prompts", type=int, nargs="+", help="AGFF-Embed's K values (default: tiny 1 11, 8b 1 11 29)")
    p.add_argument("--image-size", type=int, help="pixels a side (default: tiny 128, 8b 448)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); 1 makes the CPU "
                   "time per image a figure that another job on the machine barely changes")
    p.add_argument("--dtype", default="auto", help="tiny: float32 on the CPU; 8b: bfloat16")
    p.add_argument("--images-per-pass", type=int, default=0, help="AGFF-Embed's images per LLM forward pass "
                   "(0: saga's default, 64 without gradient)")
    p.add_argument("--no-lora", dest="lora", action="store_false", help="measure AGFF-Embed without adapters")
    p.add_argument("--out", help="JSON file (default bench/results/agff_cost_<model>_<device type>.json)")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.prompts = list(dict.fromkeys(args.prompts or ([1, 11] if args.model == "tiny" else [1, 11, 29])))
    args.image_size = args.image_size or (128 if args.model == "tiny" else 448)
    if args.worker:
        kind, k, result = args.worker
        worker(args, kind, int(k), Path(result))
        return {}

    from saga.utils import environment

    forwarded = ["--model", args.model, "--judge", args.judge, "--geometry", args.geometry, "--image-size",
                 str(args.image_size), "--batch", str(args.batch), "--repeats", str(args.repeats), "--warmup",
                 str(args.warmup), "--device", args.device, "--threads", str(args.threads), "--dtype", args.dtype,
                 "--images-per-pass",
                 str(args.images_per_pass), *([] if args.lora else ["--no-lora"])]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, k in [("saga", 0)] + [("agff", k) for k in args.prompts]:
            result = Path(tmp) / f"{kind}{k}.json"
            if args.in_process:  # tests: no start-up cost, but peak memory is then the whole process's
                worker(args, kind, k, result)
            else:
                env = dict(os.environ,
                           PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
                subprocess.run([sys.executable, __file__, *forwarded, "--worker", kind, str(k), str(result)],
                               check=True, env=env)
            name = "SAGA: tower + attention pooler" if kind == "saga" else f"AGFF-Embed, {k} prompts"
            rows[name] = json.loads(result.read_text())
    saga = rows["SAGA: tower + attention pooler"]
    for r in rows.values():
        r["images_per_s_vs_saga"] = r["images_per_s"] / saga["images_per_s"]
        r["peak_vs_saga"] = (r["peak_gpu_gib"] / saga["peak_gpu_gib"] if r["peak_gpu_gib"] is not None
                             else r["peak_rss_gib"] / saga["peak_rss_gib"])

    memory = "peak GPU GiB" if args.device.startswith("cuda") else "peak RSS GiB"
    print(f"{args.model} model, {args.image_size} px, batches of {args.batch}, {args.device}")
    print(f"| model | images/s | CPU s / image | {memory} | parameters | LLM tokens / image | vs SAGA (speed) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        peak = r["peak_gpu_gib"] if r["peak_gpu_gib"] is not None else r["peak_rss_gib"]
        tokens = r["llm_tokens"]["per_image"] if r["llm_tokens"] else 0
        print(f"| {name} | {r['images_per_s']:.1f} | {r['cpu_seconds_per_image']:.4f} | {peak:.2f} | "
              f"{r['parameters'] / 1e6:.2f} M | {tokens} | {r['images_per_s_vs_saga']:.3f}x |")
    doc = {"command": "python bench/agff_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "settings": {k: getattr(args, k) for k in ("model", "geometry", "judge", "prompts", "image_size", "batch",
                                                      "repeats", "warmup", "device", "threads", "dtype", "lora")},
           "rows": rows,
           "environment": environment() | {"cpu_count": os.cpu_count(), "load_average_1_5_15_min": os.getloadavg()}}
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    out = Path(args.out or ROOT / "bench" / "results" / f"agff_cost_{args.model}_{device_type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return doc


if __name__ == "__main__":
    main()
