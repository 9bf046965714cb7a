"""Pretrain the synthetic judge: a small Qwen3-VL (the transformers class of Qwen3-VL-8B) that compares two birds
attribute by attribute, then says "Answer: same" or "Answer: different" (docs/design.md, "The synthetic world").
Its data (random combinations, never the default benchmark world's classes) are in `saga.synth.pairs`.

The target (`prompts.format_comparison`): one line "name: value_a / value_b match|mismatch" per attribute the
prompt names (all ten, or a random subset: `pairs.vocabulary_subset`), in schema order, then "Answer: same|different";
next-token cross-entropy on the answer tokens only.

Three stages, each the cheapest way we found to teach one skill on a CPU (the measurements behind each choice:
assets/judge-tiny/README.md, "Why three stages"):
0. Reading (`warm_up_reading`, LLM only): text-only comparisons. The marks and the verdict follow from the values
   written above them, and text is enough to learn that. Without this stage the judge wrote correct-looking lines
   but gave one verdict to every pair.
1. Seeing (`warm_up_vision`, tower only): attribute classification of single photos through throw-away attention
   heads, the nuisance ramping up from a clean, centred bird. Trained only through the LLM's loss on cluttered
   photos, a tiny tower stays near chance.
2. Comparing (the whole model): pairs of photos at the benchmark's nuisance with their target comparisons.

Other choices: 128 px images (16 tokens each, the benchmark's native size; at 64 px the eye ring, bill and wing
marks fall inside single patches); AdamW with a short warm-up and cosine decay; on CPU, stages 1 and 2 give torch
the cores the render worker leaves free (OpenMP threads spin while they wait, and one fighting a worker for a core
slows a step many times over), and stage 0, which renders nothing, gets every core.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from saga.errors import ConfigError
from saga.judge.frozen import VOCABULARY_KEY
from saga.judge.prompts import pair_prompt
from saga.models import ImagePreprocessor, VisionEncoder, build_tiny_qwen3vl
from saga.progress import progress
from saga.synth import SCHEMA
from saga.synth.pairs import (EXCLUDED_WORLD, NEGATIVE_MIX, RENDER_SIZE, SAME_SHARE, AttributeStream, PairInputs,
                              PairStream, excluded_combinations, judge_corpus, prompt_answer_rows, sample_pair,
                              target, vocabulary_subset)
from saga.synth.presets import JUDGE_PRESETS, JudgePreset
from saga.utils import default_permissions, environment, resolve_device, seed_everything


def _lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def optimise(params: list[torch.nn.Parameter], spec: JudgePreset, steps: int, batches: Iterable,
             loss_of: Callable[[dict], torch.Tensor], device: torch.device, desc: str) -> list[float]:
    """`steps` AdamW steps on `params` (warm-up and cosine decay, gradient norm clipped at 1), one batch each,
    bf16 autocast on CUDA. Returns the losses."""
    optimizer = torch.optim.AdamW(params, lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, spec.warmup, steps))
    losses: list[float] = []
    with progress(total=steps, desc=f"judge pretrain: {desc}", unit="step") as bar:
        for batch in itertools.islice(batches, steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_of({k: v.to(device, non_blocking=True) for k, v in batch.items()})
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix({"loss": f"{np.mean(losses[-20:]):.3f}"})
            bar.update()
    return losses


def _tail(values: list[float]) -> float:
    """Mean of the last tenth (at most 50) of `values`: a final loss that is not one noisy batch."""
    return float(np.mean(values[-max(1, min(50, len(values) // 10)):]))


def warm_up_reading(model, processor, spec: JudgePreset, seed: int, device: torch.device) -> dict:
    """Stage 0: the LLM reads and writes comparisons on text alone (the pair prompt without images, then the
    target of a random pair; batch i from the generator (seed, 2, i)). The values of image A cannot be predicted
    without the image, so their loss only teaches the prior over values; the marks, the verdict and which
    attributes the prompt names are learnt."""
    tok = processor.tokenizer
    prompts: dict[tuple[str, ...], torch.Tensor] = {}

    def prompt(vocabulary: tuple[str, ...]) -> torch.Tensor:
        if vocabulary not in prompts:
            messages = [{"role": "user", "content": [{"type": "text", "text": pair_prompt("synth", vocabulary)}]}]
            prompts[vocabulary] = torch.tensor(tok(processor.apply_chat_template(messages, add_generation_prompt=True),
                                                   add_special_tokens=False)["input_ids"])
        return prompts[vocabulary]

    exclude = excluded_combinations()

    def batches():
        for index in itertools.count():
            rng = np.random.default_rng([seed, 2, index])
            vocabularies, answers = [], []
            for _ in range(spec.reading_batch_size):
                a, b = sample_pair(rng, exclude)
                vocabularies.append(vocabulary_subset(rng, spec.vocabulary_subsets))
                answers.append(target(a, b, vocabularies[-1]))
            ids, labels = prompt_answer_rows(tok, [prompt(v) for v in vocabularies], answers)
            yield {"input_ids": ids, "labels": labels, "attention_mask": (ids != tok.pad_token_id).long()}

    params = [p for name, p in model.named_parameters() if not name.startswith("model.visual.")]
    start = time.perf_counter()
    losses = optimise(params, spec, spec.reading_steps, batches(), lambda b: model(**b).loss, device,
                      "stage 0, reading")
    return {"reading_steps": spec.reading_steps, "reading_seconds": round(time.perf_counter() - start, 1),
            "reading_final_loss": _tail(losses)}


class AttributeHeads(torch.nn.Module):
    """One learned query per attribute attends over an image's merged tokens; a linear head reads its value.
    Used only in stage 1 and thrown away: the judge keeps the tower it trained."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.queries = torch.nn.Parameter(torch.zeros(len(SCHEMA), dim))
        self.heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(a.values)) for a in SCHEMA)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        scores = torch.einsum("btd,ad->bat", tokens, self.queries) / tokens.shape[-1] ** 0.5
        pooled = torch.einsum("bat,btd->bad", scores.masked_fill(~mask[:, None], -torch.inf).softmax(-1), tokens)
        return [head(pooled[:, i]) for i, head in enumerate(self.heads)]


def warm_up_vision(model, processor, spec: JudgePreset, seed: int, device: torch.device, workers: int) -> dict:
    """Stage 1: the tower learns the attributes directly, on single photos whose nuisance ramps up from clean
    (`AttributeStream`); the mean cross-entropy of the ten attributes. Only the tower (and the heads) train."""
    encoder = VisionEncoder(model.model.visual)  # a view, not a copy: stage 1 trains the judge's own tower
    heads = AttributeHeads(encoder.out_dim).to(device)
    stream = AttributeStream(ImagePreprocessor(processor, spec.image_size), spec.vision_batch_size, seed,
                             excluded_combinations(), spec.vision_ramp)
    accuracy: list[float] = []

    def loss_of(batch: dict) -> torch.Tensor:
        tokens, mask = encoder(batch["pixel_values"], batch["image_grid_thw"]).padded()
        logits = heads(tokens.float(), mask)
        labels = batch["labels"]
        accuracy.append(float(np.mean([(lg.argmax(-1) == labels[:, i]).float().mean().item()
                                       for i, lg in enumerate(logits)])))
        return sum(F.cross_entropy(lg, labels[:, i]) for i, lg in enumerate(logits)) / len(logits)

    start = time.perf_counter()
    optimise([*encoder.parameters(), *heads.parameters()], spec, spec.vision_steps,
             DataLoader(stream, batch_size=None, num_workers=workers), loss_of, device, "stage 1, seeing")
    return {"vision_steps": spec.vision_steps, "vision_seconds": round(time.perf_counter() - start, 1),
            "vision_final_attribute_accuracy": _tail(accuracy)}


def resolve_preset(preset: str | JudgePreset) -> JudgePreset:
    return preset if isinstance(preset, JudgePreset) else JUDGE_PRESETS.get(preset)


def build_judge(spec: JudgePreset, seed: int = 0):
    """A random judge of geometry `spec` (model in train mode; processor with the judge corpus' tokenizer)."""
    model, processor = build_tiny_qwen3vl(
        preset=spec.base, corpus=judge_corpus(), image_size=spec.image_size, seed=seed,
        vision_config=spec.vision_config, text_config=spec.text_config, tokenizer_vocab_size=spec.vocab_size)
    return model.train(), processor


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pretrain_judge(out: str | Path, preset: str | JudgePreset = "tiny", seed: int = 0, device: str = "auto",
                   steps: int | None = None, *, workers: int | None = None, save_dtype: str = "float32") -> dict:
    """Build and pretrain a judge (stages 0, 1, 2 of the module docstring), save it to `out` (loadable offline
    with `load_vlm(out)`), and return the summary that is also written to out/pretrain.json. `preset`: a name
    of `JUDGE_PRESETS` or a `JudgePreset`; `steps` overrides its number of pair steps; `workers`: rendering
    processes (default 1 on CPU, one per core but one on GPU; 0 renders in-process); `save_dtype`: of the saved
    weights ("bfloat16" halves the files; a GPU judge runs in bfloat16 anyway, a CPU one casts up on loading)."""
    if save_dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"save_dtype must be float32 or bfloat16, got {save_dtype!r}")
    spec = resolve_preset(preset)
    name = preset if isinstance(preset, str) else "custom"
    steps = spec.steps if steps is None else steps
    if steps < 1:
        raise ConfigError(f"judge pretraining needs at least 1 pair step, got {steps}")
    out, device_ = Path(out), resolve_device(device)
    seed_everything(seed)
    model, processor = build_judge(spec, seed)
    model.to(device_)
    if workers is None:
        workers = 1 if device_.type == "cpu" else max(1, _cpus() - 1)  # the GPU waits on rendering otherwise
    threads = torch.get_num_threads()
    stream = PairStream(PairInputs(processor, spec.image_size), spec.batch_size, seed, excluded_combinations(),
                        spec.vocabulary_subsets)
    start = time.perf_counter()
    try:
        if device_.type == "cpu":  # stage 0 renders nothing: every core
            torch.set_num_threads(_cpus())
        stages = warm_up_reading(model, processor, spec, seed, device_) if spec.reading_steps else {}
        if device_.type == "cpu":
            torch.set_num_threads(max(1, _cpus() - workers))
        if spec.vision_steps:
            stages.update(warm_up_vision(model, processor, spec, seed, device_, workers))
        pairs_start = time.perf_counter()
        losses = optimise(list(model.parameters()), spec, steps,
                          DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=device_.type == "cuda"),
                          lambda b: model(**b).loss, device_, f"stage 2, comparing ({name})")
        pair_seconds = time.perf_counter() - pairs_start
        torch_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    # With its generation config (stop tokens, suppressed tokens).
    model.eval().to("cpu", getattr(torch, save_dtype)).save_pretrained(out)
    processor.save_pretrained(out)
    summary = {
        "preset": name, "config": dataclasses.asdict(spec), "parameters": sum(p.numel() for p in model.parameters()),
        "vision_parameters": sum(p.numel() for p in model.model.visual.parameters()),
        "image_size": spec.image_size, "render_size": RENDER_SIZE, "steps": steps, "seed": seed,
        "device": str(device_), "torch_threads": torch_threads, "render_workers": workers,
        "wall_seconds": round(wall, 1), "pair_seconds": round(pair_seconds, 1),
        "pair_steps_per_second": round(steps / pair_seconds, 3),
        "initial_loss": float(np.mean(losses[:max(1, min(50, steps // 10))])), "final_loss": _tail(losses), **stages,
        "excluded_world": {"num_classes": EXCLUDED_WORLD[0], "seed": EXCLUDED_WORLD[1]},
        "pair_mix": {"same": SAME_SHARE, "different_by_k": [list(m) for m in NEGATIVE_MIX]},
        VOCABULARY_KEY: spec.vocabulary_subsets,  # its presence: prompts naming attributes were taught
        "save_dtype": save_dtype,
        "command": shlex.join(["saga", "judge", "pretrain", "--out", str(out), "--preset", name,
                               "--steps", str(steps), "--seed", str(seed), "--device", device,
                               "--save-dtype", save_dtype]),
        "argv": sys.argv, "environment": environment(),
    }
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    default_permissions(out)  # safetensors writes 0600
    return summary
