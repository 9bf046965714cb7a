"""Models: checkpoint loading (hub id or local directory), the trainable vision encoder, poolers, the deployable
`RetrievalModel` (encoder + pooler + preprocessing), AGFF-Embed's `AgffModel` (the MLLM itself as the embedder) and
split embedding; tiny Qwen3-VL builders for tests and the synthetic judge. Importing this package registers the
image-only processors with AutoProcessor and AGFF-Embed's saved-model format with `load_model`."""

from saga.models.agff import AdaptiveFusion, AgffModel, AgffOutput
from saga.models.backbone import (check_checkpoint, enable_activation_checkpointing, load_processor,
                                  load_vision_tower, load_vlm, resolve_checkpoint, vision_token_ids)
from saga.models.embed import EmbedResult, embed_split, save_embeddings
from saga.models.encoder import EncoderOutput, VisionEncoder
from saga.models.inject import supports_mm_encoder_outputs, vision_inputs
from saga.models.poolers import POOLERS, AttentionPooler, MeanPooler, PoolerOutput, build_pooler
from saga.models.preprocess import ImagePreprocessor
from saga.models.processor import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen3VLProcessor
from saga.models.retrieval import MODEL_FORMATS, RetrievalModel, RetrievalOutput, load_model
from saga.models.tiny import PRESETS, build_tiny_qwen3vl
from saga.models.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, VISION_TOKENS, build_tokenizer

__all__ = [
    "CHAT_TEMPLATE", "MODEL_FORMATS", "POOLERS", "PRESETS", "SPECIAL_TOKENS", "VISION_TOKENS",
    "AdaptiveFusion", "AgffModel", "AgffOutput", "AttentionPooler", "EmbedResult", "EncoderOutput",
    "ImageOnlyQwen2_5_VLProcessor", "ImageOnlyQwen3VLProcessor",
    "ImagePreprocessor", "MeanPooler", "PoolerOutput", "RetrievalModel", "RetrievalOutput", "VisionEncoder",
    "build_pooler", "build_tiny_qwen3vl", "build_tokenizer", "check_checkpoint", "embed_split",
    "enable_activation_checkpointing",
    "load_model", "load_processor", "load_vision_tower", "load_vlm", "resolve_checkpoint", "save_embeddings",
    "supports_mm_encoder_outputs", "vision_inputs", "vision_token_ids",
]
