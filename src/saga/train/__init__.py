"""Training: SAGA and the metric-learning baselines, with checkpoints and an exported deployable model.

    from saga.config import load_config
    from saga.train import train, load_trained
    result = train(load_config("configs/synth/saga.yaml"))         # `saga train --config ...`
    encoder, pooler, preprocessor = load_trained(result["run_dir"] + "/export")

Modules: setup (models, parameter groups, optimizer) -> batches (step-indexed batches, in-batch pair mining) ->
loop (one step function per method, the loss combination, the loop) -> checkpoint (atomic safetensors + JSON) ->
logger (metrics.jsonl, completions.jsonl, TensorBoard) -> export (encoder + pooler for deployment) -> run (train).
"""

from saga.train.export import export_model, load_trained
from saga.train.run import train

__all__ = ["export_model", "load_trained", "train"]
