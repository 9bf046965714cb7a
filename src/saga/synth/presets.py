"""Judge presets for `saga judge pretrain --preset NAME`: the synthetic judge's geometry and training schedule.

What each preset gives (time, accuracy per attribute) is measured in the README of the judge it produced
(assets/judge-tiny/, assets/judge-tiny-long/); the stages are described in saga.synth.pretrain.
"""

from __future__ import annotations

import dataclasses

from saga.registry import Registry


@dataclasses.dataclass(frozen=True)
class JudgePreset:
    """Model geometry (overrides of a `saga.models.tiny` preset) and the schedule of the three stages."""

    base: str  # saga.models.tiny preset the overrides start from
    vision_config: dict
    text_config: dict
    vocab_size: int
    image_size: int
    steps: int  # stage 2: pair steps
    batch_size: int  # pairs per stage-2 step
    lr: float
    warmup: int  # steps, in every stage
    reading_steps: int = 0  # stage 0 (0: skip)
    reading_batch_size: int = 64  # comparisons per stage-0 step
    vision_steps: int = 0  # stage 1 (0: skip)
    vision_batch_size: int = 32  # photos per stage-1 step
    vision_ramp: int = 0  # stage-1 steps over which the nuisance ramps from CLEAN to the benchmark's
    weight_decay: float = 0.01
    vocabulary_subsets: float = 0.5  # stages 0 and 2: share of prompts naming a random subset of the schema


# 1.5 M parameters (tower 0.97 M), about 10 CPU minutes. Stage 1 is most of the judge's sight: a third of these
# steps left shapes, patterns and leg colour near chance (assets/judge-tiny/README.md).
_TINY = JudgePreset(
    base="tiny",
    vision_config={"depth": 2, "hidden_size": 96, "intermediate_size": 384, "num_heads": 2,
                   "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]},
    text_config={"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "mrope_section": [6, 5, 5]},
    vocab_size=1024, image_size=128, steps=800, batch_size=16, lr=2e-3, warmup=50,
    reading_steps=200, vision_steps=2200, vision_ramp=1100)

JUDGE_PRESETS: Registry[JudgePreset] = Registry("judge preset")
JUDGE_PRESETS.register("tiny", _TINY)
# The tiny geometry trained longer (3.6x the seeing stage, 1.5x the comparing stage), about 25 CPU minutes: it reads
# every attribute, bill and tail shapes included (assets/judge-tiny-long/README.md). The default judge.
JUDGE_PRESETS.register("tiny-long", dataclasses.replace(_TINY, steps=1200, vision_steps=8000, vision_ramp=4000))
# For a GPU: 13.9 M parameters, the models "small" tower (10.5 M: the capacity to see shapes and patterns) with a
# lighter LLM (256 wide, 4 layers: it only reads and writes ten attribute lines). 28 MB in bfloat16, so it can travel
# with the repository between GPU sessions. Not yet trained on a GPU; on 2 CPU cores it would take about 18 hours.
JUDGE_PRESETS.register("small", JudgePreset(
    base="small", vision_config={},
    text_config={"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "head_dim": 64, "mrope_section": [12, 10, 10]},
    vocab_size=2048, image_size=128, steps=6000, batch_size=64, lr=6e-4, warmup=300, reading_steps=1000,
    vision_steps=3000, vision_batch_size=128, vision_ramp=1500))
