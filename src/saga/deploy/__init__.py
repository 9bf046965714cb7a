"""Deployment formats of the retrieval model.

`saga.deploy.onnx_export.export_onnx` writes a `RetrievalModel` as an ONNX graph plus the preprocessing settings
(needs torch); `saga.deploy.onnx_runtime.OnnxRetrievalModel` embeds images with ONNX Runtime, numpy and PIL only,
so a serving machine needs no torch. This package imports neither on its own.
"""
