"""Pretrain the synthetic judge: a small Qwen3-VL that compares two birds attribute by attribute, then says
"Answer: same" or "Answer: different" (DESIGN.md, "The synthetic attribute world").

What it learns from. Pairs of photos of RANDOM attribute combinations (its "world knowledge"), never a class of
the default benchmark world: `EXCLUDED_WORLD` = `design_world(200, seed=0)`, the classes that `saga synth --out
DIR` writes with its defaults, are rejected as either image of a pair. Other worlds (other seeds or sizes) are not
excluded; their overlap with the training stream is negligible: there are 2,654,208 combinations, so a given
class of another world shows up in the stream with probability (combinations drawn) / 2.65 M (the tiny preset
draws about 0.15 M: 6 %, and then once or twice among 0.15 M pairs), which is far too rare to memorise a
species; what the judge learns are the attributes themselves, which every world shares by design.

The mix (`sample_pair`): half the pairs are the same combination (two renders, i.e. two independent draws of
pose, background, light and occlusion, as two photos of one species differ); of the different pairs half differ
in exactly one attribute (the benchmark's hard negatives are siblings one or two attributes apart), 15 % in two,
15 % in three and 20 % are two independent random combinations. Images are rendered on the fly in DataLoader
workers (2 ms each at 128 px, cheaper than storing a pool) and JPEG round-tripped with the settings of `saga synth`,
so the judge sees the same artefacts as on the benchmark's files. Batch i is drawn from the generator (seed, i):
the stream does not depend on the number of workers.

The target (`prompts.format_comparison`): one line "name: value_a / value_b" per attribute in schema order, then
"Answer: same|different"; next-token cross-entropy on the answer tokens (and the closing <|im_end|>) only.

Choices, measured on 2 shared CPU cores (the numbers are in the report of the committed judge,
assets/judge-tiny/README.md):
- 128 px images (16 tokens each; the benchmark's native size). At 64 px an image is 4 tokens of 32 x 32 px and
  the eye ring, bill and wing marks fall inside single patches; 128 px cost about 1.5x the step time of 96 px and
  learn the shape attributes markedly faster per second.
- Two stages. Stage 1 (`warm_up_vision`) trains the tower alone to classify each attribute of single photos, the
  nuisance ramping up from a clean, centred bird; stage 2 trains the whole model on the pair comparisons at the
  benchmark's nuisance. Trained through the LLM's next-token loss alone, the tiny tower stayed near chance (attribute
  accuracy 0.29-0.37 after 10 CPU minutes, every verdict "same", with or without a nuisance curriculum), while
  direct attribute targets teach it clean birds in ~300 steps. Stage 1's heads are thrown away.
- AdamW with a short warm-up and cosine decay; a high learning rate suits these shallow models.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from saga.data.synth import (CLEAN, NUISANCE, SCHEMA, Combination, Nuisance, combination_pair, design_world,
                             random_combination, render)
from saga.data.synth.generate import JPEG
from saga.errors import ConfigError
from saga.judge.prompts import SUBJECTS, format_comparison, pair_messages, pair_prompt
from saga.models import ImagePreprocessor, build_tiny_qwen3vl
from saga.utils import environment, resolve_device, seed_everything

# The default `saga synth` world (num_classes, seed): its classes never appear in the judge's training pairs.
EXCLUDED_WORLD = (200, 0)
SAME_SHARE = 0.5
# Different pairs: (number of differing attributes, share); None = two independent random combinations.
NEGATIVE_MIX: tuple[tuple[int | None, float], ...] = ((1, 0.5), (2, 0.15), (3, 0.15), (None, 0.2))
RENDER_SIZE = 128  # the benchmark's image size (`saga synth --size` default)


@dataclasses.dataclass(frozen=True)
class JudgePreset:
    """Model geometry (overrides of a `saga.models.tiny` preset) and training schedule of one judge size."""

    base: str  # saga.models.tiny preset the overrides start from
    vision_config: dict
    text_config: dict
    vocab_size: int
    image_size: int
    steps: int
    batch_size: int  # pairs per step
    lr: float
    warmup: int  # steps
    curriculum_steps: int  # nuisance ramps from CLEAN to the benchmark's over this many steps (0: none)
    verdict_weight: float  # loss weight of the verdict word; every other answer token weighs 1
    weight_decay: float = 0.01
    vision_steps: int = 0  # stage 1: attribute classification on the tower alone (0: skip), see `warm_up_vision`
    vision_ramp: int = 0  # its nuisance ramps from CLEAN to the benchmark's over this many steps
    vision_batch_size: int = 32  # single images per stage-1 step


JUDGE_PRESETS: dict[str, JudgePreset] = {
    # CPU, <= 10 minutes on 2 cores.
    "tiny": JudgePreset(
        base="tiny",
        vision_config={"depth": 2, "hidden_size": 96, "intermediate_size": 384, "num_heads": 2,
                       "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]},
        text_config={"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "mrope_section": [6, 5, 5]},
        vocab_size=1024, image_size=128, steps=800, batch_size=16, lr=2e-3, warmup=50, curriculum_steps=0,
        verdict_weight=10.0, vision_steps=700, vision_ramp=350),
    # GPU (untested on a GPU so far): the models "small" geometry, longer and with bigger batches.
    "small": JudgePreset(
        base="small", vision_config={}, text_config={}, vocab_size=2048, image_size=128, steps=8000,
        batch_size=64, lr=6e-4, warmup=300, curriculum_steps=0, verdict_weight=10.0, vision_steps=3000,
        vision_ramp=1500, vision_batch_size=128),
}


def excluded_combinations() -> frozenset[Combination]:
    """The classes of the default benchmark world (`EXCLUDED_WORLD`), computed without rendering it."""
    return frozenset(c.combination for c in design_world(*EXCLUDED_WORLD).classes)


def sample_pair(rng: np.random.Generator, exclude: Collection[Combination] = ()
                ) -> tuple[Combination, Combination]:
    """One training pair by the mix of the module docstring; neither combination is in `exclude`."""
    if rng.random() < SAME_SHARE:
        return combination_pair(rng, 0, exclude)
    ks, shares = zip(*NEGATIVE_MIX)
    k = ks[rng.choice(len(ks), p=shares)]
    if k is not None:
        return combination_pair(rng, k, exclude)
    a = b = random_combination(rng, exclude)
    while b == a:
        b = random_combination(rng, exclude)
    return a, b


def judge_corpus() -> list[str]:
    """What the judge reads and writes, for its tokenizer: every dataset's prompt, every comparison line, both
    verdicts. Each text appears twice, as BPE only merges pairs seen at least twice."""
    texts = [pair_prompt(d) for d in SUBJECTS] + ["A:", "B:", "Answer: same", "Answer: different"]
    texts += [f"{a.name}: {u} / {v}" for a in SCHEMA for u in a.values for v in a.values]
    return texts * 2


def nuisance_level(t: float) -> Nuisance:
    """The nuisance a fraction `t` of the way from `CLEAN` (t = 0: a plain, centred bird) to the benchmark's
    `NUISANCE` (t = 1); every range is interpolated, counts rounded, per-individual proportions on from t = 0.5."""
    values = {}
    for f in dataclasses.fields(Nuisance):
        lo, hi = getattr(CLEAN, f.name), getattr(NUISANCE, f.name)
        if isinstance(lo, bool):
            values[f.name] = hi if t >= 0.5 else lo
        elif isinstance(lo, tuple):
            values[f.name] = tuple(type(a)(a + (b - a) * t) if isinstance(a, float) else round(a + (b - a) * t)
                                   for a, b in zip(lo, hi))
        else:
            values[f.name] = lo + (hi - lo) * t
    return Nuisance(**values)


def photo(combo: Combination, rng: np.random.Generator, nuisance: Nuisance = NUISANCE) -> Image.Image:
    """A benchmark-like photo of `combo`: rendered at the benchmark's size, JPEG-encoded and decoded as in
    `saga synth`."""
    buffer = io.BytesIO()
    render(combo, rng, RENDER_SIZE, nuisance).save(buffer, format="JPEG", **JPEG)
    return Image.open(buffer).convert("RGB")


class PairInputs:
    """Pair prompts (and answers) as model inputs, for a judge's processor at a fixed image size.

    Every image is resized to the same square (`ImagePreprocessor`), so every pair prompt has the same number of
    image tokens and the same token ids: the prompt is tokenized once, and a batch of prompts needs no padding.
    Answers are appended and right-padded; their labels are the answer tokens plus the closing <|im_end|>, with
    loss weight 1, except the verdict word after the last ':' ("Answer: same"), which weighs `verdict_weight`.
    """

    def __init__(self, processor, image_size: int, dataset: str = "synth", verdict_weight: float = 1.0) -> None:
        self.tokenizer, self.verdict_weight = processor.tokenizer, verdict_weight
        self.preprocessor = ImagePreprocessor(processor, image_size)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token)
        prompt = processor.apply_chat_template(pair_messages(dataset), add_generation_prompt=True)
        prompt = prompt.replace(processor.image_token, processor.image_token * self.preprocessor.tokens_per_image)
        self.prompt_ids = torch.tensor(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def __call__(self, images: Sequence[Image.Image], answers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """images: 2P images ordered a0, b0, a1, b1, ...; answers: P texts, or None for generation prompts."""
        pairs = len(images) // 2
        inputs = dict(self.preprocessor(images))
        ids = self.prompt_ids.expand(pairs, -1)
        if answers is not None:
            answer_ids, weights = self._answers(answers)
            labels = answer_ids.masked_fill(weights == 0, -100)
            inputs["labels"] = torch.cat([torch.full_like(ids, -100), labels], dim=1)
            inputs["loss_weights"] = torch.cat([torch.zeros(ids.shape), weights], dim=1)
            ids = torch.cat([ids, answer_ids], dim=1)
        inputs["input_ids"] = ids.contiguous()
        inputs["attention_mask"] = (ids != self.tokenizer.pad_token_id).long()
        inputs["mm_token_type_ids"] = (ids == self.image_token_id).long()  # required with images (REFERENCE §3)
        return inputs


    def _answers(self, answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded answer ids + <|im_end|>, and their loss weights (0 at padding)."""
        tok = self.tokenizer
        rows, weights = [], []
        for answer in answers:
            ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            w = torch.ones(len(ids))
            if ":" in answer:  # the prefix up to the last ':' tokenizes the same alone (':' is its own pre-token)
                w[len(tok(answer[:answer.rindex(":") + 1], add_special_tokens=False)["input_ids"]):-1] = \
                    self.verdict_weight
            rows.append(torch.tensor(ids))
            weights.append(w)
        ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.pad_token_id)
        return ids, torch.nn.utils.rnn.pad_sequence(weights, batch_first=True, padding_value=0.0)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean next-token cross-entropy: position t predicts token t + 1; weight 0 outside the answers."""
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100,
                         reduction="none")
    w = weights[:, 1:].flatten()
    return (ce * w).sum() / w.sum()


class PairStream(IterableDataset):
    """Endless training batches; batch i comes from the generator (seed, i), whichever worker renders it, with the
    nuisance at level min(1, i / curriculum_steps) (`nuisance_level`; always the full nuisance when 0)."""

    def __init__(self, inputs: Callable, batch_size: int, seed: int, exclude: Collection[Combination],
                 curriculum_steps: int = 0) -> None:
        self.inputs, self.batch_size, self.seed, self.exclude = inputs, batch_size, seed, exclude
        self.curriculum_steps = curriculum_steps

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        nuisance = nuisance_level(min(1.0, index / self.curriculum_steps)) if self.curriculum_steps else NUISANCE
        images, answers = [], []
        for _ in range(self.batch_size):
            a, b = sample_pair(rng, self.exclude)
            images += [photo(a, rng, nuisance), photo(b, rng, nuisance)]
            answers.append(format_comparison(a.as_dict(), b.as_dict(), same=a == b))
        return self.inputs(images, answers)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = worker
        while True:  # DataLoader takes batches from its workers in turn, so the order is 0, 1, 2, ...
            yield self.batch(index)
            index += workers


def _lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class AttributeStream(IterableDataset):
    """Stage-1 batches: single photos of random combinations and their attribute value indexes (B, attributes);
    batch i from the generator (seed, 1, i), nuisance at level min(1, i / ramp)."""

    def __init__(self, preprocessor: ImagePreprocessor, batch_size: int, seed: int,
                 exclude: Collection[Combination], ramp: int) -> None:
        self.preprocessor, self.batch_size, self.seed, self.exclude, self.ramp = (
            preprocessor, batch_size, seed, exclude, ramp)

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 1, index])
        nuisance = nuisance_level(min(1.0, index / self.ramp)) if self.ramp else NUISANCE
        combos = [random_combination(rng, self.exclude) for _ in range(self.batch_size)]
        inputs = dict(self.preprocessor([photo(c, rng, nuisance) for c in combos]))
        inputs["labels"] = torch.tensor([[a.values.index(c.as_dict()[a.name]) for a in SCHEMA] for c in combos])
        return inputs

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for index in itertools.count(worker, workers):
            yield self.batch(index)


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
    """Stage 1: teach the tower the attributes directly, on single photos, nuisance ramping up from clean.

    Why: trained only through the LLM's next-token loss on cluttered photos, the tiny tower stayed near chance
    (attribute accuracy 0.29-0.37 after 10 CPU minutes, every verdict "same"); with direct attribute targets it
    reads clean birds in about 300 steps, and the ramp then carries that to the benchmark's nuisance. Stage 2 (the
    pair comparisons) then only has to teach the LLM to read the tower's tokens and compare.
    """
    from saga.models import VisionEncoder

    encoder = VisionEncoder(model.model.visual)  # a view, not a copy: stage 1 trains the judge's own tower
    heads = AttributeHeads(encoder.out_dim).to(device)
    stream = AttributeStream(ImagePreprocessor(processor, spec.image_size), spec.vision_batch_size, seed,
                             excluded_combinations(), spec.vision_ramp)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    params = [*encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, spec.warmup, spec.vision_steps))
    accuracy: list[float] = []
    with tqdm(total=spec.vision_steps, desc="judge pretrain (stage 1: attributes)", unit="step",
              disable=None) as bar:
        for batch in itertools.islice(loader, spec.vision_steps):
            labels = batch.pop("labels").to(device)
            tokens, mask = encoder(batch["pixel_values"].to(device), batch["image_grid_thw"]).padded()
            logits = heads(tokens.float(), mask)
            loss = sum(F.cross_entropy(lg, labels[:, i]) for i, lg in enumerate(logits)) / len(logits)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            accuracy.append(float(np.mean([(lg.argmax(-1) == labels[:, i]).float().mean().item()
                                           for i, lg in enumerate(logits)])))
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{np.mean(accuracy[-20:]):.3f}")
            bar.update()
    window = max(1, min(50, spec.vision_steps // 10))
    return {"vision_steps": spec.vision_steps, "vision_final_attribute_accuracy": float(np.mean(accuracy[-window:]))}


def resolve_preset(preset: str | JudgePreset) -> JudgePreset:
    if isinstance(preset, JudgePreset):
        return preset
    if preset not in JUDGE_PRESETS:
        raise ConfigError(f"unknown judge preset {preset!r}; choose one of {sorted(JUDGE_PRESETS)}")
    return JUDGE_PRESETS[preset]


def build_judge(spec: JudgePreset, seed: int = 0):
    """A random judge of geometry `spec` (model in train mode; processor with the judge corpus' tokenizer)."""
    model, processor = build_tiny_qwen3vl(
        preset=spec.base, corpus=judge_corpus(), image_size=spec.image_size, seed=seed,
        vision_config=spec.vision_config, text_config=spec.text_config, tokenizer_vocab_size=spec.vocab_size)
    return model.train(), processor


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pretrain_judge(out: str | Path, preset: str | JudgePreset = "tiny", seed: int = 0, device: str = "auto",
                   steps: int | None = None, *, workers: int | None = None) -> dict:
    """Build and pretrain a judge, save it to `out` (loadable with `load_vlm(out)`), and return the summary that is
    also written to out/pretrain.json. `preset`: a name of `JUDGE_PRESETS` or a `JudgePreset`; `steps` overrides
    its number of steps; `workers`: rendering processes (default 1 on CPU, up to 8 on GPU; 0 renders in-process).

    On CPU, torch gets the cores the render workers leave free: OpenMP threads spin while they wait, and one
    competing for a core with a worker made a step 30x slower on 2 cores (12 s instead of 0.35 s).
    """
    spec = resolve_preset(preset)
    name = preset if isinstance(preset, str) else "custom"
    steps = spec.steps if steps is None else steps
    if steps < 1:
        raise ConfigError(f"judge pretraining needs at least 1 step, got {steps}")
    out, device_ = Path(out), resolve_device(device)
    seed_everything(seed)
    model, processor = build_judge(spec, seed)
    model.to(device_)
    stream = PairStream(PairInputs(processor, spec.image_size, verdict_weight=spec.verdict_weight), spec.batch_size,
                        seed, excluded_combinations(), spec.curriculum_steps)
    if workers is None:
        workers = 1 if device_.type == "cpu" else min(8, _cpus())
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=device_.type == "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, spec.warmup, steps))
    threads = torch.get_num_threads()
    if device_.type == "cpu":
        torch.set_num_threads(max(1, _cpus() - workers))

    losses: list[float] = []
    start = time.perf_counter()
    stage1 = {}
    try:
        if spec.vision_steps:
            stage1 = warm_up_vision(model, processor, spec, seed, device_, workers)
        with tqdm(total=steps, desc=f"judge pretrain ({name}, stage 2: pairs)", unit="step", disable=None) as bar:
            for batch in itertools.islice(loader, steps):
                batch = {k: v.to(device_, non_blocking=True) for k, v in batch.items()}
                with torch.autocast(device_.type, dtype=torch.bfloat16, enabled=device_.type == "cuda"):
                    labels, weights = batch.pop("labels"), batch.pop("loss_weights")
                    loss = answer_loss(model(**batch).logits, labels, weights)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
                bar.update()
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    model.eval().to("cpu").save_pretrained(out)  # with its generation config (stop tokens, suppressed tokens)
    processor.save_pretrained(out)
    window = max(1, min(50, steps // 10))
    summary = {
        "preset": name, "config": dataclasses.asdict(spec), "parameters": sum(p.numel() for p in model.parameters()),
        "vision_parameters": sum(p.numel() for p in model.model.visual.parameters()),
        "image_size": spec.image_size, "render_size": RENDER_SIZE, "steps": steps, "seed": seed,
        "device": str(device_), "torch_threads": max(1, _cpus() - workers) if device_.type == "cpu" else threads,
        "render_workers": workers, "wall_seconds": round(wall, 1), "steps_per_second": round(steps / wall, 3),
        "initial_loss": float(np.mean(losses[:window])), "final_loss": float(np.mean(losses[-window:])), **stage1,
        "excluded_world": {"num_classes": EXCLUDED_WORLD[0], "seed": EXCLUDED_WORLD[1]},
        "pair_mix": {"same": SAME_SHARE, "different_by_k": [list(m) for m in NEGATIVE_MIX]},
        "command": shlex.join(["saga", "judge", "pretrain", "--out", str(out), "--preset", name,
                               "--steps", str(steps), "--seed", str(seed), "--device", device]),
        "argv": sys.argv, "environment": environment(),
    }
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
