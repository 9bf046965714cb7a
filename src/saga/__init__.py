"""saga: retrieval vision encoders trained with attribute-level gradients from a frozen MLLM (arXiv 2606.15134).

    import saga
    model = saga.load_model("runs/cub/saga/export")    # encoder + pooler + preprocessing
    embeddings = model.embed(images)                     # (N, E), L2-normalised

`saga.load_model` and `saga.RetrievalModel` are imported on first use, so `import saga.deploy.onnx_runtime` (ONNX
inference) needs no torch.
"""

__version__ = "0.1.0"
__all__ = ["RetrievalModel", "load_model"]


def __getattr__(name: str):
    if name in __all__:
        from saga.models import retrieval

        return getattr(retrieval, name)
    raise AttributeError(f"module 'saga' has no attribute {name!r}")
