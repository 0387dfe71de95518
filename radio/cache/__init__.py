"""The cache format: Arrow tensor columns, atomic shard files, the manifest, and a key-checking reader."""

from .arrow import arrow_to_tensor, tensor_to_arrow, tensor_type
from .reader import MANIFEST_NAME, CacheBatch, CacheError, CacheMismatch, CacheReader, describe_differences, load_manifest, save_manifest
from .store import FORMAT_VERSION, CacheLocation, ShardInfo, decode_metadata, encode_metadata, teacher_path, views_path

__all__ = [
    "FORMAT_VERSION", "MANIFEST_NAME", "CacheBatch", "CacheError", "CacheLocation", "CacheMismatch", "CacheReader",
    "ShardInfo", "arrow_to_tensor", "decode_metadata", "describe_differences", "encode_metadata", "load_manifest",
    "save_manifest", "teacher_path", "tensor_to_arrow", "tensor_type", "views_path",
]
