"""A judge sharded over 2 processes (FSDP2, gloo), for tests/judge/test_sharded.py (run under torchrun).

    torchrun --nproc_per_node 2 tests/judge/fsdp_judge.py JUDGE OUT.json

Each rank compares the sharded judge with a whole copy of it on its own pairs: sampled completions (each rank
decodes a different number of tokens, so the synced decoding is exercised), teacher-forced log-probs, attention
targets and the gradient into the encoder's features, with the judge under gradient checkpointing.
"""

import json
import sys

import torch

from saga.judge import FrozenJudge
from saga.models import ImagePreprocessor, VisionEncoder
from saga.train import distributed


def features(judge: FrozenJudge, encoder: VisionEncoder, rank: int):
    torch.manual_seed(100 + rank)  # each rank its own images
    from PIL import Image
    images = [Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()) for _ in range(4)]
    inputs = ImagePreprocessor(judge.processor, 64)(images)
    return encoder(inputs["pixel_values"], inputs["image_grid_thw"])


def run(judge: FrozenJudge, rank: int) -> dict:
    encoder = VisionEncoder.from_vlm(judge.model)  # the tower is never sharded
    enc = features(judge, encoder, rank)
    rollout = judge.rollout(enc, num_generations=2, max_new_tokens=3 + 4 * rank, seed=rank)
    scores = judge.score(enc, rollout, attention_layers=[-1])
    scores.logps.sum().backward()
    return {"ids": rollout.completion_ids, "logps": scores.logps.detach(),
            "attention": torch.cat(scores.image_attention), "grads": [p.grad for p in encoder.parameters()]}


def main(judge_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    world = distributed.init("cpu")
    whole = FrozenJudge.load(judge_dir, device="cpu", gradient_checkpointing=True)
    sharded = FrozenJudge.load(judge_dir, device="cpu", gradient_checkpointing=True)
    sharded.shard(torch.device("cpu"))
    a, b = run(whole, world.rank), run(sharded, world.rank)
    grads = a["grads"], b["grads"]
    report = {
        "rank": world.rank,
        "sharded": type(sharded.layers()[0].self_attn.q_proj.weight).__name__,
        "same_completions": bool(torch.equal(a["ids"], b["ids"])),
        "completion_length": a["ids"].shape[1],
        "logps": float((a["logps"] - b["logps"]).abs().max()),
        "attention": float((a["attention"] - b["attention"]).abs().max()),
        "grad": max(float((x - y).abs().max()) for x, y in zip(*grads, strict=True)),
        "grad_norm": float(sum(x.norm() for x in grads[0])),
    }
    reports = distributed.gather_objects(report)
    if world.is_main:
        with open(out, "w") as f:
            json.dump(reports, f)
    distributed.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:3])
