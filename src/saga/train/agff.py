"""AGFF-Embed's trainable model from a run's config (docs/method.md, "AGFF-Embed"): its prompts and what is trained.

The MLLM is the run's checkpoint (`model.backbone`, else `model.judge`: the judge's own checkpoint, not a frozen
judge). Prompts: the global one, then one per aspect; the aspects are `agff.aspects` or, when that is None, the
dataset's attribute vocabulary (`saga.data.dataset_vocabulary`: the synthetic world's attributes, CUB's groups of
attributes.txt, the written lists in configs/vocabularies/). The subject word is the one the judge's pair prompt
uses (`saga.judge.prompts.SUBJECTS`).
"""

from __future__ import annotations

import torch

from saga.config import TrainConfig
from saga.data import dataset_vocabulary
from saga.errors import ConfigError
from saga.judge.prompts import SUBJECTS
from saga.models.agff import AgffModel


def agff_prompts(cfg: TrainConfig) -> list[str]:
    """The K prompt texts of a run: the global prompt, then `agff.aspect_prompt` for each aspect ({aspect}: its name
    in words, "bill shape"; {aspect_name}: as the dataset writes it, "bill_shape")."""
    a = cfg.agff
    subject = SUBJECTS.get(cfg.data.dataset, SUBJECTS["folder"])[0]
    aspects = a.aspects if a.aspects is not None else dataset_vocabulary(cfg.data.dataset, cfg.data.root)
    if aspects is None:
        raise ConfigError(f"agff.aspects: dataset {cfg.data.dataset!r} has no attribute vocabulary to take aspects "
                          "from; list them")
    try:
        prompts = [a.global_prompt.format(subject=subject)]
        prompts += [a.aspect_prompt.format(aspect=x.replace("_", " "), aspect_name=x, subject=subject)
                    for x in aspects]
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"agff.global_prompt / agff.aspect_prompt: only {{subject}}, {{aspect}} and "
                          f"{{aspect_name}} may be filled in ({type(e).__name__}: {e})") from None
    if len(set(prompts)) != len(prompts):
        raise ConfigError(f"agff: two prompts are the same text; each aspect must be named once: {prompts}")
    return prompts


def trainable_spec(cfg: TrainConfig) -> dict:
    """What the MLLM trains (`saga.models.agff.apply_trainable`): LoRA settings or the names of the modules."""
    a = cfg.agff
    if a.trainable == "lora":
        return {"kind": "lora", "rank": a.lora_rank, "alpha": a.lora_alpha, "dropout": a.lora_dropout,
                "targets": list(a.lora_targets)}
    return {"kind": "modules", "modules": list(a.train_modules)}


def build_agff(cfg: TrainConfig, device: torch.device) -> AgffModel:
    """The trainable AGFF-Embed model of `cfg`, in train mode on `device`."""
    if cfg.model.pooler != "auto" or cfg.model.embed_dim is not None:
        raise ConfigError("method agff fuses its prompt embeddings itself (saga.models.agff.AdaptiveFusion) at the "
                          "LLM's width; leave model.pooler at auto and model.embed_dim at null")
    return AgffModel.build(cfg.model.backbone or cfg.model.judge, agff_prompts(cfg), trainable_spec(cfg),
                           image_size=cfg.data.image_size, device=device, dtype=cfg.model.dtype,
                           gradient_checkpointing=cfg.model.gradient_checkpointing,
                           images_per_pass=cfg.agff.images_per_pass,
                           trust_remote_code=cfg.model.trust_remote_code)
