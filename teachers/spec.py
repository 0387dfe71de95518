"""TeacherSpec: everything that determines a teacher's outputs, and a fingerprint over it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace

__all__ = ["TeacherSpec", "TeacherOutput", "fingerprint_of"]

# Fields that describe where weights were found, not what the teacher computes.
_NOT_FINGERPRINTED = ("name", "source", "fingerprint")


@dataclass(frozen=True)
class TeacherSpec:
    """The facts of a loaded teacher. Travels as plain data (``to_dict``) into every cache shard."""

    name: str
    family: str  # clip | dinov2 | sam | siglip
    source: str  # hub id or local directory the weights came from
    revision: str | None
    input_size: tuple[int, int]  # (H, W) of pixel_values
    resize: str  # shortest_edge (+ center crop) | longest_edge_pad | exact
    resize_size: int | tuple[int, int]
    crop_size: tuple[int, int] | None
    pad_size: tuple[int, int] | None
    interpolation: str  # bicubic | bilinear (Pillow's)
    rescale_factor: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: int
    summary_dim: int | None
    feature_dim: int
    feature_grid: tuple[int, int]
    dtype: str  # fp32 | bf16 | fp16
    output: str  # which tensors are taken as summary and features
    weights_sha256: str
    fingerprint: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TeacherSpec":
        kw = {}
        for f in fields(cls):
            v = d.get(f.name)
            kw[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)

    def with_fingerprint(self) -> "TeacherSpec":
        return replace(self, fingerprint=fingerprint_of(self))


def fingerprint_of(spec: TeacherSpec) -> str:
    """sha256 (16 hex) of a canonical JSON of every field that changes the output.

    The local path and the registry name are left out: the same weights in another directory, or under
    another name, compute the same targets. Floats are serialized by ``json`` (shortest round-trip repr),
    so the hash is identical across processes and machines.
    """
    d = {k: v for k, v in spec.to_dict().items() if k not in _NOT_FINGERPRINTED}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class TeacherOutput:
    """``summary_BD`` (None for teachers without one), ``features_BHWC``, ``valid_hw_B2`` (float32 / int64)."""

    summary_BD: "object"
    features_BHWC: "object"
    valid_hw_B2: "object"
