"""Training data of the distillation: checked prompt files with a stateless, resumable sampler (data-free) and
image-text parquet shards encoded into per-shard caches with the official shard rotation (data-aided).

The implementation lives in :mod:`.prompts` and :mod:`.shards`; this module is the one place to import from.
"""

from .prompts import PromptSampler, find_overlap, load_prompts, normalize_caption, prompt_indices, read_lines
from .shards import (
    CACHE_FORMAT,
    DEFAULT_IMAGES_PER_SHARD,
    SHARD_PATTERN,
    ShardCache,
    ShardData,
    cache_path,
    encode_shard,
    file_sha256,
    is_fresh,
    list_shards,
    load_cache,
    merge_caches,
    preprocess_image,
    read_shard,
)

__all__ = [
    "CACHE_FORMAT",
    "DEFAULT_IMAGES_PER_SHARD",
    "SHARD_PATTERN",
    "PromptSampler",
    "ShardCache",
    "ShardData",
    "cache_path",
    "encode_shard",
    "file_sha256",
    "find_overlap",
    "is_fresh",
    "list_shards",
    "load_cache",
    "load_prompts",
    "merge_caches",
    "normalize_caption",
    "preprocess_image",
    "prompt_indices",
    "read_lines",
    "read_shard",
]
