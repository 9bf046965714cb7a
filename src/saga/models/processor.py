"""Image-only processors for Qwen3-VL and Qwen2.5-VL.

`Qwen3VLProcessor` and `Qwen2_5_VLProcessor` also build a video processor, which needs torchvision; the CPU
machines have none (docs/method.md, "The judge"). SAGA only ever shows images, so these subclasses drop the
video processor: their `__init__` takes (image_processor, tokenizer, chat_template), which is how transformers
infers a processor's parts. Text and image handling (placeholder expansion, `mm_token_type_ids`) is inherited
unchanged. The image processor falls back to its PIL backend without torchvision.

Importing this module registers both classes with `AutoProcessor`, so a directory saved with one of them
(its processor_config.json names the class) loads with `AutoProcessor.from_pretrained(dir)`.
"""

from __future__ import annotations

from transformers import AutoProcessor, Qwen2_5_VLProcessor, Qwen3VLProcessor


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """`Qwen3VLProcessor` without a video processor (no torchvision needed)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor (no torchvision needed)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


# Processor class per config `model_type`, used by `saga.models.backbone.load_processor`.
IMAGE_ONLY_PROCESSORS = {"qwen3_vl": ImageOnlyQwen3VLProcessor, "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor}

# The registry key is a plain name rather than a config class: keying on Qwen3VLConfig would replace the stock
# processor for every Qwen3-VL checkpoint. AutoProcessor finds these classes by the name in processor_config.json.
for _cls in IMAGE_ONLY_PROCESSORS.values():
    AutoProcessor.register(f"saga.{_cls.__name__}", _cls, exist_ok=True)
