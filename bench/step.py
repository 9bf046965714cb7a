"""One SAGA step at a given judge geometry: where the time goes, how far each part is from the hardware bound, and
how it compares with the naive way of computing the same step.

The step (docs/design.md, "One SAGA step") on P random image pairs, split into timed phases:

    encoder_forward   trainable tower, once per image (2P images)
    rollout           judge.rollout: one generate for all P x G completions, image features shared by indexing
    scoring           judge.score with attention capture (hooks on the attention layers) + L_GRPO backward, into
                      the image features only
    dml               attention pooler + Proxy Anchor + L_KL (to the judge's attention), forward + backward
    encoder_backward  the gradients gathered at the image features, through the tower once
Measured besides, not part of the step: `prefill` (the same rollout stopped after its first token: a decode step
costs (rollout - prefill) / (steps - 1)) and `scoring_no_attention` (the attention hooks cost the difference).
Each phase's backward stops at leaf copies of the encoder outputs, so it is timed on its own; `encoder_backward`
then runs the tower's backward once on everything gathered there, as the trainer's single backward does.

The naive path (--naive, bench/step_naive.py) computes the same step the simple way: the judge's tower, carrying the
encoder's weights, runs on every completion's copy of its pair's pixels; one generate per pair; eager attention
returning every layer's maps; log-softmax over all positions of the full logits. Its step time is its rollout and
scoring plus the encoder / pooler / DML phases of the fast path (the same work in both). On the fast path's own
completions the two must give the same log-probs, attention targets and encoder gradients (`agreement`).

Roofline: a decode step reads every LLM weight and the KV cache once (`bench/geometry.py`, `decode_bytes`) and
cannot beat that divided by the memory bandwidth; the scoring pass's model FLOPs (`scoring_flops`) over its time
and the GPU's dense bf16 peak is its MFU. Bandwidth and peak come from `GPUS` (vendor datasheets) by device name,
or --bandwidth-tbs / --peak-tflops. Random weights: decoding runs to max_new_tokens (a random judge rarely samples a
stop token), and every completion has no verdict, so the attention queries are all its tokens (an upper bound).

    python bench/step.py --model 8b --pairs 8 --generations 8 --image-size 448 --max-new-tokens 128 \\
        --device cuda --dtype bfloat16 --naive --out bench/results/step_8b.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_naive as naive  # noqa: E402  (bench/step_naive.py, beside this file)
from geometry import build_from_config, decode_bytes, parameter_counts, scoring_flops  # noqa: E402  (bench/)

from saga.judge import FrozenJudge  # noqa: E402
from saga.judge.prompts import pair_prompt  # noqa: E402
from saga.losses import ProxyAnchor, attention_kl, grpo_loss  # noqa: E402
from saga.models import (  # noqa: E402
    PRESETS,
    AttentionPooler,
    EncoderOutput,
    ImagePreprocessor,
    VisionEncoder,
    build_tiny_qwen3vl,
    enable_activation_checkpointing,
    load_vlm,
)
from saga.utils import environment, resolve_device, resolve_dtype  # noqa: E402

# Device-name substring -> (HBM bandwidth B/s, dense bf16 FLOP/s), first match wins; NVIDIA datasheets.
GPUS = (("H200", 4.8e12, 989e12), ("H100 NVL", 3.9e12, 835e12), ("H100 PCIe", 2.0e12, 756e12),
        ("H100", 3.35e12, 989e12), ("A100", 2.039e12, 312e12))
TARGETS = {"speedup_vs_naive": 10.0, "decode_ratio_to_bound": 3.0, "scoring_mfu": 0.35, "peak_memory_gib": 80.0}
STEP_PHASES = ("encoder_forward", "rollout", "scoring", "dml", "encoder_backward")
GIB = 2**30


class Timer:
    """Wall time (median over repeats) and peak CUDA memory per phase; CUDA is synchronised around each phase."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.peak_bytes: dict[str, int] = defaultdict(int)

    @contextmanager
    def __call__(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        tic = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_bytes[name] = max(self.peak_bytes[name], torch.cuda.max_memory_allocated())
        self.seconds[name].append(time.perf_counter() - tic)

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self.seconds.items()}


@dataclass
class Bench:
    """Everything one step needs; images 2p and 2p + 1 form pair p."""

    judge: FrozenJudge
    encoder: VisionEncoder
    pooler: AttentionPooler
    dml: ProxyAnchor
    inputs: dict[str, Tensor]
    labels: Tensor
    advantages: Tensor
    args: argparse.Namespace


def build(args: argparse.Namespace) -> Bench:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    corpus = [pair_prompt()] * 2  # the prompt's words get merged tokens, as a real tokenizer has them
    if args.model in PRESETS:
        model, processor = build_tiny_qwen3vl(preset=args.model, corpus=corpus, image_size=args.image_size,
                                              seed=args.seed)
        model.to(device, dtype)
    elif args.model == "8b" or args.model.endswith(".json"):
        model, processor = build_from_config("qwen3vl-8b" if args.model == "8b" else args.model, dtype=dtype,
                                             device=device, image_size=args.image_size, corpus=corpus, seed=args.seed)
    else:
        model, processor = load_vlm(args.model, device=str(device), dtype=dtype)
    judge = FrozenJudge(model, processor, gradient_checkpointing=args.checkpointing)
    if args.attention_layers is None:
        args.attention_layers = [-8, -4, -1] if model.config.text_config.num_hidden_layers >= 8 else [-1]
    if args.cache == "static":  # on CUDA, transformers then compiles the decoding steps (unless --no-compile)
        model.generation_config.cache_implementation = "static"
        model.generation_config.disable_compile = not args.compile
    encoder = VisionEncoder.from_vlm(model, dtype=resolve_dtype(args.encoder_dtype, device)).train()
    if args.checkpointing:
        enable_activation_checkpointing(encoder.tower)
    pooler = AttentionPooler(encoder.out_dim).to(device)
    dml = ProxyAnchor(args.pairs, encoder.out_dim, seed=args.seed).to(device)
    rng = np.random.default_rng(args.seed)
    images = [Image.fromarray(rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8))
              for _ in range(2 * args.pairs)]
    inputs = {k: v.to(device) for k, v in ImagePreprocessor(processor, args.image_size)(images).items()}
    labels = torch.arange(2 * args.pairs, device=device) // 2  # pair p: two images of class p
    # The values do not change the cost; group-centred like real GRPO advantages.
    advantages = torch.from_numpy(rng.standard_normal((args.pairs, args.generations))).float()
    advantages = (advantages - advantages.mean(1, keepdim=True)).flatten().to(device)
    return Bench(judge, encoder, pooler, dml, inputs, labels, advantages, args)


def leaves(enc: EncoderOutput) -> EncoderOutput:
    """Detached copies of the encoder outputs that collect gradients (where each phase's backward stops)."""
    def cut(per_image):
        return tuple(t.detach().requires_grad_() for t in per_image)

    return EncoderOutput(cut(enc.tokens), cut(enc.patches), tuple(cut(level) for level in enc.deepstack),
                         enc.grid_thw, enc.output_cls)


def flat(enc: EncoderOutput) -> list[Tensor]:
    return [*enc.tokens, *enc.patches, *(t for level in enc.deepstack for t in level)]


def backward_into_encoder(enc: EncoderOutput, leaf: EncoderOutput) -> None:
    """The tower's backward, once, on the gradients gathered at the leaves."""
    pairs = [(out, cut.grad) for out, cut in zip(flat(enc), flat(leaf), strict=True) if cut.grad is not None]
    torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])


def score_and_backward(b: Bench, features: EncoderOutput, rollout, attention_layers):
    """judge.score + L_GRPO backward (on-policy: the gradient is A * grad log pi, docs/method.md, "L_GRPO")."""
    scores = b.judge.score(features, rollout, attention_layers=attention_layers)
    mask = rollout.completion_mask.to(scores.logps.device)
    grpo_loss(scores.logps, b.advantages, mask, loss_type="grpo")["loss"].backward()
    return scores


def fast_step(b: Bench, timer: Timer):
    a = b.args
    generation = dict(num_generations=a.generations, temperature=1.0, top_p=1.0, seed=a.seed)
    with timer("encoder_forward"):
        enc = b.encoder(**b.inputs)
    leaf = leaves(enc)
    with timer("rollout"):
        rollout = b.judge.rollout(leaf, max_new_tokens=a.max_new_tokens, **generation)
    with timer("prefill"):
        b.judge.rollout(leaf, max_new_tokens=1, **generation)
    with timer("scoring_no_attention"):
        score_and_backward(b, leaf, rollout, None)
    for t in flat(leaf):
        t.grad = None
    with timer("scoring"):
        scores = score_and_backward(b, leaf, rollout, a.attention_layers)
    with timer("dml"):
        tokens, mask = leaf.padded()
        pooled = b.pooler(tokens.float(), mask)
        judge_attention = pad_sequence([t.to(mask.device) for t in scores.image_attention], batch_first=True)
        loss = b.dml(pooled.embedding, b.labels)["loss"] + attention_kl(pooled.attention, judge_attention, mask)["loss"]
        loss.backward()
    with timer("encoder_backward"):
        backward_into_encoder(enc, leaf)
    return rollout, scores


def naive_step(b: Bench, timer: Timer, rollout) -> None:
    a = b.args
    with timer("rollout"):
        naive.rollout(b.judge, b.encoder, b.inputs, num_generations=a.generations,
                      max_new_tokens=a.max_new_tokens, seed=a.seed)
    with timer("scoring"):
        naive.score(b.judge, b.encoder, b.inputs, rollout, b.advantages, a.attention_layers)


def agreement(b: Bench) -> dict[str, float]:
    """Fast vs naive on the same completions: log-probs, attention targets, encoder gradients of L_GRPO."""
    a = b.args
    b.encoder.zero_grad(set_to_none=True)
    enc = b.encoder(**b.inputs)
    leaf = leaves(enc)
    rollout = b.judge.rollout(leaf, num_generations=a.generations, max_new_tokens=a.max_new_tokens, seed=a.seed)
    fast = score_and_backward(b, leaf, rollout, a.attention_layers)
    backward_into_encoder(enc, leaf)
    fast_grads = [p.grad.clone() for p in b.encoder.parameters()]
    b.encoder.zero_grad(set_to_none=True)
    logps, attention = naive.score(b.judge, b.encoder, b.inputs, rollout, b.advantages, a.attention_layers)
    naive_grads = [p.grad for p in b.encoder.parameters()]
    b.encoder.zero_grad(set_to_none=True)
    diff = torch.sqrt(sum(((f - n).float() ** 2).sum() for f, n in zip(fast_grads, naive_grads, strict=True)))
    norm = torch.sqrt(sum((n.float() ** 2).sum() for n in naive_grads))
    out = {
        "logps_max_abs_diff": float((fast.logps.detach() - logps).abs().max()),
        "attention_max_abs_diff": max(float((f - n).abs().max()) for f, n in zip(fast.image_attention, attention,
                                                                                  strict=True)),
        "encoder_grad_rel_diff": float(diff / norm.clamp(min=1e-30)),
        "static_vs_dynamic_token_match": None,
    }
    if a.cache == "static":  # the same sampling with transformers' default (dynamic) cache, uncompiled
        config = b.judge.model.generation_config
        config.cache_implementation = None
        try:
            dynamic = b.judge.rollout(leaf, num_generations=a.generations, max_new_tokens=a.max_new_tokens,
                                      seed=a.seed)
        finally:
            config.cache_implementation = "static"
        width = min(dynamic.completion_ids.shape[1], rollout.completion_ids.shape[1])
        same = dynamic.completion_ids[:, :width] == rollout.completion_ids[:, :width]
        out["static_vs_dynamic_token_match"] = float(same.float().mean())
    return out


def hardware(device: torch.device, args: argparse.Namespace) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    match = next(((bw, peak) for key, bw, peak in GPUS if key in name), (None, None))
    bandwidth = args.bandwidth_tbs * 1e12 if args.bandwidth_tbs else match[0]
    peak = args.peak_tflops * 1e12 if args.peak_tflops else match[1]
    return {"name": name, "bandwidth_bytes_per_s": bandwidth, "peak_flops_per_s": peak,
            "source": "flags" if args.bandwidth_tbs or args.peak_tflops else ("table" if bandwidth else None)}


def ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


def report(b: Bench, hw: dict, fast: Timer, rollout, naive_timer: Timer | None, agree: dict | None) -> dict:
    a, config = b.args, b.judge.model.config
    device = b.judge.device
    phases = fast.medians()
    step = sum(phases[k] for k in STEP_PHASES)
    sequences, steps = rollout.completion_ids.shape
    tokens = int(rollout.completion_mask.sum())
    decode_step = (phases["rollout"] - phases["prefill"]) / (steps - 1) if steps > 1 else None
    bytes_per_step = decode_bytes(config, batch=sequences, context=rollout.prompt_length + steps / 2,
                                  bytes_per_value=b.judge.model.dtype.itemsize)
    bound = ratio(bytes_per_step, hw["bandwidth_bytes_per_s"])
    flops = scoring_flops(config, rollout.attention_mask.sum(1).tolist(), tokens)
    peak = max(fast.peak_bytes.values(), default=0) / GIB if device.type == "cuda" else None
    out = {
        "pairs_per_s": a.pairs / step, "completion_tokens_per_s": tokens / step, "step_s": step,
        "phases_s": phases, "completion_tokens": tokens, "decode_steps": steps,
        "peak_memory_gib": peak, "phase_peak_memory_gib": {k: v / GIB for k, v in fast.peak_bytes.items()},
        "decode": {"step_s": decode_step, "bytes_per_step": bytes_per_step, "bound_s": bound,
                   "ratio_to_bound": ratio(decode_step, bound)},
        "scoring": {"model_flops": flops, "achieved_flops_per_s": flops / phases["scoring"],
                    "mfu": ratio(flops / phases["scoring"], hw["peak_flops_per_s"]),
                    "mfu_without_attention": ratio(flops / phases["scoring_no_attention"], hw["peak_flops_per_s"]),
                    "attention_overhead_s": phases["scoring"] - phases["scoring_no_attention"]},
    }
    result = {"fast": out, "naive": None, "speedup_vs_naive": None, "agreement": agree}
    if naive_timer is not None:
        n_phases = naive_timer.medians()
        n_step = n_phases["rollout"] + n_phases["scoring"] + sum(phases[k] for k in STEP_PHASES
                                                                 if k not in ("rollout", "scoring"))
        n_peak = [v / GIB for v in naive_timer.peak_bytes.values()]
        result["naive"] = {"pairs_per_s": a.pairs / n_step, "step_s": n_step, "phases_s": n_phases,
                           "peak_memory_gib": max(n_peak) if n_peak else None}
        result["speedup_vs_naive"] = n_step / step
    measured = {"speedup_vs_naive": result["speedup_vs_naive"], "scoring_mfu": out["scoring"]["mfu"],
                "decode_ratio_to_bound": out["decode"]["ratio_to_bound"], "peak_memory_gib": peak}
    at_most = ("decode_ratio_to_bound", "peak_memory_gib")
    result["targets"] = TARGETS
    result["met"] = {k: None if v is None else (v <= TARGETS[k] if k in at_most else v >= TARGETS[k])
                     for k, v in measured.items()}
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="8b", help=f"8b, a tiny preset {sorted(PRESETS)}, a config .json "
                                                 "(random weights) or a checkpoint directory")
    p.add_argument("--pairs", type=int, default=8, help="P pairs per step (paper preset: 8)")
    p.add_argument("--generations", type=int, default=8, help="G completions per pair")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--attention-layers", type=int, nargs="+",
                   help="judge layers of the L_KL target (default: the paper preset's -8 -4 -1, or -1 for a judge "
                        "of fewer than 8 layers)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="the judge's (auto: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--encoder-dtype", default="float32", help="the trainable tower's (paper preset: float32)")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                   help="no activation checkpointing in the judge and the tower")
    p.add_argument("--cache", choices=("dynamic", "static"), default="dynamic",
                   help="KV cache of the rollout; static lets transformers compile the decoding steps on CUDA")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="with --cache static: do not compile")
    p.add_argument("--naive", action="store_true", help="also time the naive path and check agreement")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3, help="timed steps (medians are reported)")
    p.add_argument("--bandwidth-tbs", type=float, help="memory bandwidth, TB/s (default: from the GPU table)")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak, TFLOP/s (default: from the GPU table)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON file to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    b = build(args)
    device = b.judge.device
    fast = Timer(device)
    for i in range(args.warmup + args.repeats):
        timer = fast if i >= args.warmup else Timer(device)
        rollout, _ = fast_step(b, timer)
        b.encoder.zero_grad(set_to_none=True)
        b.pooler.zero_grad(set_to_none=True)
        b.dml.zero_grad(set_to_none=True)
    naive_timer = agree = None
    if args.naive:
        naive_timer = Timer(device)
        for i in range(args.warmup + args.repeats):
            naive_step(b, naive_timer if i >= args.warmup else Timer(device), rollout)
            b.encoder.zero_grad(set_to_none=True)
        agree = agreement(b)
    counts = parameter_counts(b.judge.model)
    hw = hardware(device, args)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "bench/step.py", *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment(),
        "hardware": hw,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": {"parameters": counts, "judge_dtype": str(b.judge.model.dtype), "sequences": len(rollout.texts),
                  "prompt_length": rollout.prompt_length, "image_tokens": b.inputs["image_grid_thw"][0].prod().item()
                  // b.encoder.merge_size**2},
        **report(b, hw, fast, rollout, naive_timer, agree),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
