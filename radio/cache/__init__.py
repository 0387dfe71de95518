"""The cache format, in one place: Arrow tensor columns, target codecs, the typed manifest, the writer,
atomic shard files, and a key-checking reader."""

from .arrow import arrow_to_tensor, column_tensor, tensor_field, tensor_to_arrow
from .codec import MIN_COS, TARGET_DTYPES, bytes_per_row, decode_features, decode_summary, encode_targets, feature_columns, grid_suffix
from .manifest import (
    FORMAT_VERSION, MANIFEST_NAME, CacheError, CacheFormatError, CacheIdentity, CacheMismatch, Manifest, ManifestDamaged, Moments, Skipped,
    TargetLayout, TeacherEntry, TeacherStats, ViewsEntry, load_manifest, save_manifest,
)
from .reader import CacheBatch, CacheReader, column_types, describe_differences
from .store import CacheLocation, ShardInfo, decode_metadata, encode_metadata, teacher_path, views_path
from .commit import Commit, FileRef, RecordError, commit_path, read_record, stats_path
from .state import MomentsMerger, TableState, build_manifest, read_merged_moments, scan_table, table_dirs
from .writer import check_footer, open_checked, shard_meta, shard_moments, stats_differ, write_teacher_shard, write_views_shard

__all__ = [
    "FORMAT_VERSION", "MANIFEST_NAME", "MIN_COS", "TARGET_DTYPES", "CacheBatch", "CacheError", "CacheFormatError", "CacheIdentity", "ManifestDamaged",
    "CacheLocation", "CacheMismatch", "CacheReader", "Manifest", "Moments", "ShardInfo", "Skipped", "TargetLayout", "TeacherEntry",
    "TeacherStats", "ViewsEntry", "arrow_to_tensor", "build_manifest", "bytes_per_row", "decode_features",
    "decode_metadata", "decode_summary", "describe_differences", "encode_metadata", "encode_targets",
    "feature_columns", "grid_suffix", "column_types", "check_footer", "open_checked", "stats_differ", "load_manifest", "save_manifest", "shard_meta", "shard_moments",
    "Commit", "FileRef", "RecordError", "commit_path", "read_record", "stats_path", "MomentsMerger", "TableState", "build_manifest", "read_merged_moments", "scan_table", "table_dirs", "tensor_to_arrow", "tensor_field", "column_tensor",
    "teacher_path", "views_path", "write_teacher_shard", "write_views_shard",
]
