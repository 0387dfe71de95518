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
    family: str  # clip | dinov2 | dinov3 | sam | sam2 | sam3 | sam3-trunk | siglip
    source: str  # hub id or local directory the weights came from
    revision: str | None
    input_size: tuple[int, int]  # (H, W) of pixel_values for a square view
    # How the whole view becomes the input (never cropped, so every target cell lines up with the view):
    #   fit_aspect:       square view -> input_size; otherwise short side -> resize_size, long side -> the
    #                     nearest multiple of the patch (aspect kept, position embeddings interpolated)
    #   longest_edge_pad: long side -> resize_size, then zero padding to pad_size (outside the view)
    #   exact:            resized to input_size (resize_size)
    resize: str
    resize_size: int | tuple[int, int]
    pad_size: tuple[int, int] | None
    # bicubic | bilinear (Pillow's) | torchvision-bilinear (antialiased, uint8) | torchvision-bilinear-float (after
    # rescale)
    interpolation: str
    rescale_factor: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: int
    summary_dim: int | None
    feature_dim: int
    feature_grid: tuple[int, int]
    dtype: str  # fp32 | bf16 | fp16
    attention: (
        str | None
    )  # the attention kernel transformers runs (sdpa | eager | ...): it changes the numbers, so it is fingerprinted
    output: str  # which tensors are taken as summary and features
    weights_sha256: str
    fingerprint: str = ""
    # torch.compile'd forward: the same math, fused kernels round differently, so it is fingerprinted. Left out of
    # the hash when False, so the fingerprints of caches built before this field existed hold.
    compiled: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TeacherSpec:
        kw = {}
        for f in fields(cls):
            if f.name not in d and f.name == "compiled":  # specs written before the field existed
                continue
            v = d.get(f.name)
            kw[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)

    def with_fingerprint(self) -> TeacherSpec:
        return replace(self, fingerprint=fingerprint_of(self))


def fingerprint_of(spec: TeacherSpec) -> str:
    """sha256 (16 hex) of a canonical JSON of every field that changes the output.

    The local path and the registry name are left out: the same weights in another directory, or under
    another name, compute the same targets. Floats are serialized by ``json`` (shortest round-trip repr),
    so the hash is identical across processes and machines.
    """
    d = {k: v for k, v in spec.to_dict().items() if k not in _NOT_FINGERPRINTED}
    if not d.get("compiled"):
        d.pop("compiled", None)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class TeacherOutput:
    """``summary_BD`` (B, D) float32 or None (no summary); ``features_BHWC`` float32; ``valid_hw_B2`` float32:
    the view's extent on each feature map, in cells from the top-left (fractional where SAM's padding
    starts inside a cell), on the host; the rest of the map is padding."""

    summary_BD: object
    features_BHWC: object
    valid_hw_B2: object
