"""Training: SAGA and the metric-learning baselines, step by step, with checkpoints.

Modules: methods (the METHODS registry: one step function per method) -> setup (models, parameter groups,
optimizer) -> batches (step-indexed batches, in-batch pair mining) -> loop (the loss combination, the loop) ->
checkpoint (atomic safetensors + JSON) -> logger (metrics.jsonl, completions.jsonl, TensorBoard).

A whole run (run directory, resume, final evaluation, export) is the application's `saga.app.run.train`, which
`saga train --config FILE.yaml` calls.
"""

from saga.train.loop import combine, run_loop
from saga.train.methods import METHODS, Method
from saga.train.setup import Parts, build_parts

__all__ = ["METHODS", "Method", "Parts", "build_parts", "combine", "run_loop"]
