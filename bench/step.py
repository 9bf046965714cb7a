"""One SAGA step at a given judge geometry: where the time goes, how far each part is from the hardware bound, and
how it compares with the per-completion path and with the naive way of computing the same step.

The step (docs/design.md, "One SAGA step") on P random image pairs, split into timed phases:

    encoder_forward   trainable tower, once per image (2P images)
    rollout           judge.rollout: P x G completions, image features shared by indexing
    scoring           judge.score with attention capture (hooks on the attention layers) + L_GRPO backward, into
                      the image features only
    dml               attention pooler + Proxy Anchor + L_KL (to the judge's attention), forward + backward
    encoder_backward  the gradients gathered at the image features, through the tower once
Measured besides, not part of the step: `prefill` (the same rollout stopped after its first token: a decode step
costs (rollout - prefill) / (steps - 1)) and `scoring_no_attention` (the attention hooks cost the difference).
Each phase's backward stops at leaf copies of the encoder outputs, so it is timed on its own; `encoder_backward`
then runs the tower's backward once on everything gathered there, as the trainer's single backward does.

Three ways to compute the step, all in one process:
- `shared`: what `saga train` runs (grpo.shared_prefix, grpo.cache): each pair's prompt prefilled once and shared by
  its G completions, decoding with the --cache setting (auto: static and compiled on CUDA), one packed scoring pass
  per pair (`saga.judge.prefix`);
- `fast` (--fast): the per-completion path (grpo.shared_prefix false, what `saga train` ran before): one generate
  over P x G copies of the prompts (--fast-cache), scoring every completion with its own copy of the prompt;
- `naive` (--naive, bench/step_naive.py): the judge's tower, carrying the encoder's weights, runs on every
  completion's copy of its pair's pixels; one generate per pair; eager attention returning every layer's maps;
  log-softmax over all positions of the full logits. Its step time is its rollout and scoring plus the encoder /
  pooler / DML phases of the shared path (the same work in both); --naive-repeats timed steps, no warm-up.
On the shared path's own completions the other paths must give the same log-probs, attention targets and encoder
gradients (`agreement`, which also compares greedy completions of the two rollouts and of the two caches).

Roofline: a decode step reads every LLM weight and the KV cache once and cannot beat that divided by the memory
bandwidth (`bench/geometry.py`, `decode_bytes`; with a shared prefix each prompt's keys and values are read once per
pair, not once per completion). The scoring pass's model FLOPs (`scoring_flops`; with a shared prefix the packed
rows' tokens and attention pairs) over its time and the GPU's dense bf16 peak is its MFU. Bandwidth and peak come
from `GPUS` (vendor datasheets) by device name, or --bandwidth-tbs / --peak-tflops. Random weights: decoding runs to
max_new_tokens (a random judge rarely samples a stop token), and every completion has no verdict, so the attention
queries are all its tokens (an upper bound). `estimate` turns the measured step into the CUB preset's time per
SAGA run (its optim.steps; training steps only: no evaluation, data loading or checkpoints).

    python bench/step.py --model 8b --pairs 8 --generations 8 --image-size 448 --max-new-tokens 128 \\
        --device cuda --dtype bfloat16 --fast --naive --out bench/results/step_8b.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shlex
import statistics
import subprocess
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

from saga.config import load_config  # noqa: E402
from saga.judge import FrozenJudge, decoding  # noqa: E402
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

REPO = Path(__file__).resolve().parents[1]
# Device-name substring -> (HBM bandwidth B/s, dense bf16 FLOP/s), first match wins; NVIDIA datasheets.
GPUS = (("H200", 4.8e12, 989e12), ("H100 NVL", 3.9e12, 835e12), ("H100 PCIe", 2.0e12, 756e12),
        ("H100", 3.35e12, 989e12), ("A100", 2.039e12, 312e12))
# Issue 16, Qwen3-VL-8B geometry (P = 8, G = 8, 448 px, 128 tokens) on one H100 / H200.
TARGETS = {"speedup_vs_naive": 15.0, "decode_ratio_to_bound": 3.0, "scoring_s": 1.5, "step_s": 5.0,
           "peak_memory_gib": 60.0}
AT_LEAST = ("speedup_vs_naive",)
STEP_PHASES = ("encoder_forward", "rollout", "scoring", "dml", "encoder_backward")
ESTIMATE_PRESET = REPO / "configs" / "cub" / "saga.yaml"
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
    """Everything one step needs; images 2p and 2p + 1 form pair p. judge: the shared path (--cache);
    per_completion: the same model on the per-completion ("fast") path."""

    judge: FrozenJudge
    per_completion: FrozenJudge
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
    judge = FrozenJudge(model, processor, gradient_checkpointing=args.checkpointing, shared_prefix=True,
                        cache=args.cache)
    per_completion = copy.copy(judge)
    per_completion.shared_prefix, per_completion.cache = False, args.fast_cache or args.cache
    if args.attention_layers is None:
        args.attention_layers = [-8, -4, -1] if model.config.text_config.num_hidden_layers >= 8 else [-1]
    if not args.compile:  # neither our decoding step nor transformers' generate compiles
        decoding.COMPILE_DEVICES = ()
        model.generation_config.disable_compile = True
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
    return Bench(judge, per_completion, encoder, pooler, dml, inputs, labels, advantages, args)


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


def score_and_backward(b: Bench, judge: FrozenJudge, features: EncoderOutput, rollout, attention_layers):
    """judge.score + L_GRPO backward (on-policy: the gradient is A * grad log pi, docs/method.md, "L_GRPO")."""
    scores = judge.score(features, rollout, attention_layers=attention_layers)
    mask = rollout.completion_mask.to(scores.logps.device)
    grpo_loss(scores.logps, b.advantages, mask, loss_type="grpo")["loss"].backward()
    return scores


def generation(b: Bench, **overrides) -> dict:
    a = b.args
    return {"num_generations": a.generations, "max_new_tokens": a.max_new_tokens, "temperature": 1.0, "top_p": 1.0,
            "seed": a.seed, **overrides}


def run_step(b: Bench, judge: FrozenJudge, timer: Timer):
    """One step on `judge`'s path (shared or per-completion), phase by phase."""
    a = b.args
    with timer("encoder_forward"):
        enc = b.encoder(**b.inputs)
    leaf = leaves(enc)
    with timer("rollout"):
        rollout = judge.rollout(leaf, **generation(b))
    with timer("prefill"):
        judge.rollout(leaf, **generation(b, max_new_tokens=1))
    with timer("scoring_no_attention"):
        score_and_backward(b, judge, leaf, rollout, None)
    for t in flat(leaf):
        t.grad = None
    with timer("scoring"):
        scores = score_and_backward(b, judge, leaf, rollout, a.attention_layers)
    with timer("dml"):
        tokens, mask = leaf.padded()
        pooled = b.pooler(tokens.float(), mask)
        judge_attention = pad_sequence([t.to(mask.device) for t in scores.image_attention], batch_first=True)
        loss = b.dml(pooled.embedding, b.labels)["loss"] + attention_kl(pooled.attention, judge_attention, mask)["loss"]
        loss.backward()
    with timer("encoder_backward"):
        backward_into_encoder(enc, leaf)
    for module in (b.encoder, b.pooler, b.dml):
        module.zero_grad(set_to_none=True)
    return rollout, scores


def naive_step(b: Bench, timer: Timer, rollout) -> None:
    a = b.args
    with timer("rollout"):
        naive.rollout(b.judge, b.encoder, b.inputs, num_generations=a.generations,
                      max_new_tokens=a.max_new_tokens, seed=a.seed)
    with timer("scoring"):
        naive.score(b.judge, b.encoder, b.inputs, rollout, b.advantages, a.attention_layers)
    b.encoder.zero_grad(set_to_none=True)


def _encoder_grads(b: Bench, judge: FrozenJudge, rollout) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Log-probs, attention targets and the encoder's L_GRPO gradients of `rollout` scored on `judge`'s path."""
    enc = b.encoder(**b.inputs)
    leaf = leaves(enc)
    scores = score_and_backward(b, judge, leaf, rollout, b.args.attention_layers)
    backward_into_encoder(enc, leaf)
    grads = [p.grad.clone() for p in b.encoder.parameters()]
    b.encoder.zero_grad(set_to_none=True)
    return scores.logps.detach(), scores.image_attention, grads


def _differences(logps, attention, grads, other) -> dict[str, float]:
    o_logps, o_attention, o_grads = other
    diff = torch.sqrt(sum(((g - o).float() ** 2).sum() for g, o in zip(grads, o_grads, strict=True)))
    norm = torch.sqrt(sum((o.float() ** 2).sum() for o in o_grads))
    return {"logps_max_abs_diff": float((logps - o_logps).abs().max()),
            "attention_max_abs_diff": max(float((x - y).abs().max()) for x, y in zip(attention, o_attention,
                                                                                     strict=True)),
            "encoder_grad_rel_diff": float(diff / norm.clamp(min=1e-30))}


def _token_match(x, y) -> float:
    width = min(x.completion_ids.shape[1], y.completion_ids.shape[1])
    return float((x.completion_ids[:, :width] == y.completion_ids[:, :width]).float().mean())


def agreement(b: Bench, with_naive: bool) -> dict:
    """The shared path against the per-completion one ("fast") and the naive one, on the shared path's own
    completions: log-probs, attention targets, encoder gradients of L_GRPO. Greedy completions (top_p tiny) of the
    shared and the per-completion rollouts, and of the static and the dynamic cache: the share of equal tokens
    (bf16 rounding can flip a near tie on a random judge, after which the completions part)."""
    with torch.no_grad():
        leaf = leaves(b.encoder(**b.inputs))
    rollout = b.judge.rollout(leaf, **generation(b))
    shared = _encoder_grads(b, b.judge, rollout)
    out = {"fast": _differences(*shared, _encoder_grads(b, b.per_completion, rollout)), "naive": None}
    if with_naive:
        logps, attention = naive.score(b.judge, b.encoder, b.inputs, rollout, b.advantages, b.args.attention_layers)
        naive_grads = [p.grad.clone() for p in b.encoder.parameters()]
        b.encoder.zero_grad(set_to_none=True)
        out["naive"] = _differences(*shared, (logps, attention, naive_grads))
    greedy = generation(b, top_p=1e-6)
    completions = b.judge.rollout(leaf, **greedy)
    out["greedy_shared_vs_fast_token_match"] = _token_match(completions, b.per_completion.rollout(leaf, **greedy))
    other = copy.copy(b.judge)
    other.cache = "dynamic" if decoding.resolve_cache(b.judge.cache, b.judge.device) == "static" else "static"
    out["greedy_static_vs_dynamic_token_match"] = _token_match(completions, other.rollout(leaf, **greedy))
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


def shared_costs(config, rollout, bytes_per_value: int) -> tuple[float, float]:
    """(decode bytes per step, scoring model FLOPs) with a shared prefix: each pair's prompt keys and values read
    once per decode step; scoring over packed rows, each completion token attending to its prompt and its own
    earlier tokens (the `scoring_flops` convention otherwise)."""
    t = config.text_config
    sequences, steps = rollout.completion_ids.shape
    num_pairs = int(rollout.pair_of.max()) + 1
    firsts = torch.arange(0, sequences, sequences // num_pairs)  # a pair's sequences share its prompt
    prompts = rollout.attention_mask[firsts, :rollout.prompt_length].sum(1).tolist()
    prompt_kv = sum(prompts) * t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * bytes_per_value
    decode = decode_bytes(config, batch=sequences, context=steps / 2, bytes_per_value=bytes_per_value) + prompt_kv
    lengths = rollout.completion_mask.sum(1).tolist()
    pair_prompt_of = [prompts[p] for p in rollout.pair_of.tolist()]
    packed = [prompt + sum(n for n, q in zip(lengths, rollout.pair_of.tolist(), strict=True) if q == p)
              for p, prompt in enumerate(prompts)]
    flops = scoring_flops(config, packed, sum(lengths))  # linear layers and lm_head: the packed tokens
    # Attention: scoring_flops counts each packed row as one causal sequence; a completion token attends to its
    # prompt and its own earlier tokens only.
    causal = sum(n * (n + 1) // 2 for n in packed)
    actual = sum(p * (p + 1) // 2 for p in prompts) + sum(n * lp + n * (n + 1) // 2
                                                          for n, lp in zip(lengths, pair_prompt_of, strict=True))
    flops -= 3 * 4 * t.num_hidden_layers * t.num_attention_heads * t.head_dim * (causal - actual)
    return decode, flops


def path_report(b: Bench, hw: dict, timer: Timer, rollout, shared: bool) -> dict:
    a, config = b.args, b.judge.model.config
    phases = timer.medians()
    step = sum(phases[k] for k in STEP_PHASES)
    sequences, steps = rollout.completion_ids.shape
    tokens = int(rollout.completion_mask.sum())
    decode_step = (phases["rollout"] - phases["prefill"]) / (steps - 1) if steps > 1 else None
    itemsize = b.judge.model.dtype.itemsize
    if shared:
        bytes_per_step, flops = shared_costs(config, rollout, itemsize)
    else:
        bytes_per_step = decode_bytes(config, batch=sequences, context=rollout.prompt_length + steps / 2,
                                      bytes_per_value=itemsize)
        flops = scoring_flops(config, rollout.attention_mask.sum(1).tolist(), tokens)
    bound = ratio(bytes_per_step, hw["bandwidth_bytes_per_s"])
    cuda = b.judge.device.type == "cuda"
    return {
        "pairs_per_s": a.pairs / step, "completion_tokens_per_s": tokens / step, "step_s": step,
        "phases_s": phases, "completion_tokens": tokens, "decode_steps": steps,
        "peak_memory_gib": max(timer.peak_bytes.values(), default=0) / GIB if cuda else None,
        "phase_peak_memory_gib": {k: v / GIB for k, v in timer.peak_bytes.items()},
        "decode": {"step_s": decode_step, "bytes_per_step": bytes_per_step, "bound_s": bound,
                   "ratio_to_bound": ratio(decode_step, bound)},
        "scoring": {"model_flops": flops, "achieved_flops_per_s": flops / phases["scoring"],
                    "mfu": ratio(flops / phases["scoring"], hw["peak_flops_per_s"]),
                    "mfu_without_attention": ratio(flops / phases["scoring_no_attention"], hw["peak_flops_per_s"]),
                    "attention_overhead_s": phases["scoring"] - phases["scoring_no_attention"]},
    }


def estimate(step_s: float, args: argparse.Namespace) -> dict:
    """The CUB preset's time per SAGA run at the measured step (training steps only); `settings_match_preset`:
    whether this run had the preset's geometry (8B judge, P, G, image size, completion length)."""
    cfg = load_config(ESTIMATE_PRESET)
    g = cfg.grpo
    same = (g.pairs_per_step, g.num_generations, cfg.data.image_size, g.max_completion_length) == \
        (args.pairs, args.generations, args.image_size, args.max_new_tokens) and args.model == "8b"
    return {"preset": str(ESTIMATE_PRESET.relative_to(REPO)), "steps": cfg.optim.steps, "step_s": step_s,
            "hours": step_s * cfg.optim.steps / 3600, "settings_match_preset": same}


def report(b: Bench, hw: dict, shared: Timer, rollout, fast: tuple | None, naive_timer: Timer | None,
           agree: dict | None) -> dict:
    a = b.args
    out = path_report(b, hw, shared, rollout, shared=True)
    result = {"shared": out, "fast": None, "naive": None, "speedup_vs_fast": None, "speedup_vs_naive": None,
              "agreement": agree, "estimate": estimate(out["step_s"], a)}
    if fast is not None:
        result["fast"] = path_report(b, hw, *fast, shared=False)
        result["speedup_vs_fast"] = result["fast"]["step_s"] / out["step_s"]
    if naive_timer is not None:
        phases = naive_timer.medians()
        step = phases["rollout"] + phases["scoring"] + sum(out["phases_s"][k] for k in STEP_PHASES
                                                           if k not in ("rollout", "scoring"))
        peak = [v / GIB for v in naive_timer.peak_bytes.values()]
        result["naive"] = {"pairs_per_s": a.pairs / step, "step_s": step, "phases_s": phases,
                           "peak_memory_gib": max(peak) if peak else None, "repeats": a.naive_repeats}
        result["speedup_vs_naive"] = step / out["step_s"]
    measured = {"speedup_vs_naive": result["speedup_vs_naive"],
                "decode_ratio_to_bound": out["decode"]["ratio_to_bound"], "scoring_s": out["phases_s"]["scoring"],
                "step_s": out["step_s"], "peak_memory_gib": out["peak_memory_gib"]}
    result["targets"] = TARGETS
    # The targets are for the 8B geometry on one GPU: anything else is not judged against them.
    judged = result["estimate"]["settings_match_preset"] and b.judge.device.type == "cuda"
    result["met"] = {k: None if v is None or not judged else (v >= TARGETS[k] if k in AT_LEAST else v <= TARGETS[k])
                     for k, v in measured.items()}
    return result


def commit() -> str | None:
    """SAGA_COMMIT if set, else this checkout's commit; None when the script runs outside its own checkout (a copy
    of the tree inside another repository would report that repository's commit)."""
    if os.environ.get("SAGA_COMMIT"):
        return os.environ["SAGA_COMMIT"]
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=REPO, capture_output=True, text=True,
                             timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return environment()["git_commit"] if top and Path(top).resolve() == REPO else None


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
    p.add_argument("--cache", choices=decoding.CACHES, default="auto",
                   help="the rollouts' KV cache (grpo.cache): static (compiled decoding on CUDA), dynamic, or auto "
                        "(static on CUDA, dynamic on CPU)")
    p.add_argument("--fast-cache", choices=decoding.CACHES,
                   help="the per-completion path's generate cache (default: --cache); static compiles on CUDA")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="never compile decoding")
    p.add_argument("--fast", action="store_true", help="also time the per-completion path (grpo.shared_prefix false)")
    p.add_argument("--fast-repeats", type=int, default=1, help="its timed steps (after one untimed)")
    p.add_argument("--naive", action="store_true", help="also time the naive path and check agreement")
    p.add_argument("--naive-repeats", type=int, default=1, help="its timed steps (no warm-up: ~76 s each at 8B)")
    p.add_argument("--warmup", type=int, default=1, help="untimed shared steps first (compilation happens there)")
    p.add_argument("--repeats", type=int, default=3, help="timed shared steps (medians are reported)")
    p.add_argument("--no-agreement", dest="agreement", action="store_false",
                   help="skip the agreement checks (they score the shared completions on every path)")
    p.add_argument("--bandwidth-tbs", type=float, help="memory bandwidth, TB/s (default: from the GPU table)")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak, TFLOP/s (default: from the GPU table)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON file to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    tic = time.perf_counter()
    b = build(args)
    device = b.judge.device
    hw = hardware(device, args)
    shared = Timer(device)
    fast = naive_timer = agree = None

    def write(done: str) -> dict:
        """The result so far (`completed`: the stages done), written to --out after each stage, so that a run
        stopped by a time limit still leaves what it measured."""
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", "bench/step.py", *(sys.argv[1:] if argv is None else argv)]),
            "environment": {**environment(), "git_commit": commit()},
            "hardware": hw,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "model": {"parameters": parameter_counts(b.judge.model), "judge_dtype": str(b.judge.model.dtype),
                      "sequences": len(rollout.texts), "prompt_length": rollout.prompt_length,
                      "image_tokens": b.inputs["image_grid_thw"][0].prod().item() // b.encoder.merge_size**2},
            **report(b, hw, shared, rollout, fast, naive_timer, agree),
            "completed": done,
            "wall_s": time.perf_counter() - tic,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"[{result['wall_s']:.0f} s] {done} done", file=sys.stderr, flush=True)
        return result

    for i in range(args.warmup + args.repeats):
        rollout, _ = run_step(b, b.judge, shared if i >= args.warmup else Timer(device))
    write("shared")
    if args.fast:
        timer = Timer(device)
        for i in range(1 + args.fast_repeats):
            fast_rollout, _ = run_step(b, b.per_completion, timer if i else Timer(device))
        fast = (timer, fast_rollout)
        write("fast")
    if args.naive:
        naive_timer = Timer(device)
        for _ in range(args.naive_repeats):
            naive_step(b, naive_timer, rollout)
        write("naive")
    if args.agreement:
        agree = agreement(b, args.naive)
    result = write("all")
    print(json.dumps(result, indent=2))
    e = result["estimate"]
    note = "" if e["settings_match_preset"] else "; NOT the preset's geometry, so not its estimate"
    print(f"{e['preset']}: {e['steps']:,} steps x {e['step_s']:.2f} s = {e['hours']:.1f} h per SAGA run (training "
          f"steps only{note})", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
