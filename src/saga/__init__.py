"""saga: retrieval vision encoders trained with attribute-level gradients from a frozen MLLM (arXiv 2606.15134)."""

__version__ = "0.1.0"
