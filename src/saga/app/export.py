"""`saga export RUN --out DIR`: a trained run as a model folder that needs nothing else of the run.

    --format safetensors   weights, config, processor settings and a model card with the run's test metrics and
                           config (saga.models.retrieval); `saga.load_model(DIR)` loads it
    --format onnx          encoder + pooler at a fixed image size for ONNX Runtime (saga.deploy.onnx_export),
                           checked against torch on a few images; embedding with it needs no torch
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from saga.errors import CheckpointError
from saga.models import load_model


def _run_record(run: Path) -> dict:
    """The run's record for the model card: the export's own, completed from the run folder (test_metrics.json and
    config.yaml) for an export written before the record held them."""
    export = run / "export" if (run / "export").is_dir() else run
    record = dict(json.loads((export / "saga_model.json").read_text()).get("run") or {})
    folder = export.parent
    if "test_metrics" not in record and (folder / "test_metrics.json").is_file():
        record["test_metrics"] = json.loads((folder / "test_metrics.json").read_text())
    if "config" not in record and (folder / "config.yaml").is_file():
        record["config"] = yaml.safe_load((folder / "config.yaml").read_text())
    return record


def export_run(run: str | Path, out: str | Path, *, fmt: str = "safetensors", image_size: int | None = None) -> Path:
    """Write the model of `run` (a run folder or its export/) to `out` in format `fmt`; returns `out`."""
    run, out = Path(run), Path(out)
    model = load_model(run, device="cpu")  # a clear error when `run` holds no saved model
    if out.resolve() in (run.resolve(), (run / "export").resolve()):
        raise CheckpointError(f"{out}: the export would overwrite the run's own model; choose another --out")
    if fmt == "safetensors":
        if image_size is not None and image_size != model.image_size:
            raise CheckpointError(f"--image-size is for --format onnx; the model keeps its training size "
                                  f"{model.image_size}")
        return model.save_pretrained(out, run=_run_record(run))
    if fmt == "onnx":
        from saga.deploy.onnx_export import export_onnx
        from saga.models import RetrievalModel

        if not isinstance(model, RetrievalModel):  # AGFF-Embed: the whole MLLM, read under K prompts
            raise CheckpointError(f"{run}: --format onnx exports an encoder + pooler; this model "
                                  f"({type(model).__name__}) keeps the MLLM and has no ONNX export")

        check = export_onnx(model, out, image_size=image_size)["check"]
        print(f"ONNX Runtime against torch on {check['images']} images: max abs difference "
              f"{check['max_abs_diff']:.2e}")
        return out
    raise ValueError(f"unknown export format {fmt!r}: use safetensors or onnx")
