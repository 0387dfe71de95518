"""The teacher registry, and the frozen :class:`Teacher` it creates.

One entry per teacher: ``create_teacher("dinov2-vitb14")``, ``list_teachers()``. Adding a teacher of a
known family is one line below.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .families import FAMILIES, model_type_of, to_grid
from .preprocess import PIL_CODES, input_size, pil_resize, torchvision_resize
from .spec import TeacherOutput, TeacherSpec
from .tiny import materialize_tiny, radio_home

__all__ = [
    "RegistryEntry",
    "REGISTRY",
    "list_teachers",
    "get_spec_template",
    "create_teacher",
    "check_source",
    "Teacher",
    "UnknownTeacher",
    "TeacherLoadError",
]


class UnknownTeacher(KeyError):
    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class TeacherLoadError(RuntimeError):
    """Weights that cannot be loaded: a missing file, another architecture, no network for a hub id."""


@dataclass(frozen=True)
class RegistryEntry:
    """A teacher's name, family and default source, plus its nominal shapes (for listings, before loading)."""

    name: str
    family: str
    source: str  # hub id; tiny presets: "tiny:<name>" (materialized locally)
    input_size: tuple[int, int]
    summary_dim: int | None
    feature_dim: int
    feature_grid: tuple[int, int]
    revision: str | None = None
    dtype: str = "fp32"

    @property
    def tiny(self) -> bool:
        return self.source.startswith("tiny:")


def _e(name, family, source, size, sdim, fdim, grid, dtype="fp32"):
    return RegistryEntry(name, family, source, (size, size), sdim, fdim, (grid, grid), dtype=dtype)


REGISTRY: dict[str, RegistryEntry] = {
    e.name: e
    for e in [
        _e("clip-vit-b16", "clip", "openai/clip-vit-base-patch16", 224, 512, 768, 14),
        _e("clip-vit-l14", "clip", "openai/clip-vit-large-patch14", 224, 768, 1024, 16),
        _e("clip-vit-l14-336", "clip", "openai/clip-vit-large-patch14-336", 336, 768, 1024, 24),
        _e("dinov2-vits14", "dinov2", "facebook/dinov2-small", 224, 384, 384, 16),
        _e("dinov2-vitb14", "dinov2", "facebook/dinov2-base", 224, 768, 768, 16),
        _e("dinov2-vitl14", "dinov2", "facebook/dinov2-large", 224, 1024, 1024, 16),
        _e("dinov2-vitg14", "dinov2", "facebook/dinov2-giant", 224, 1536, 1536, 16),
        _e("dinov2-vits14-reg", "dinov2", "facebook/dinov2-with-registers-small", 224, 384, 384, 16),
        _e("dinov2-vitb14-reg", "dinov2", "facebook/dinov2-with-registers-base", 224, 768, 768, 16),
        _e("dinov2-vitl14-reg", "dinov2", "facebook/dinov2-with-registers-large", 224, 1024, 1024, 16),
        _e("dinov2-vitg14-reg", "dinov2", "facebook/dinov2-with-registers-giant", 224, 1536, 1536, 16),
        _e("sam-vit-b", "sam", "facebook/sam-vit-base", 1024, None, 256, 64),
        _e("sam-vit-l", "sam", "facebook/sam-vit-large", 1024, None, 256, 64),
        _e("sam-vit-h", "sam", "facebook/sam-vit-huge", 1024, None, 256, 64),
        _e("siglip-b16-224", "siglip", "google/siglip-base-patch16-224", 224, 768, 768, 14),
        _e(
            "siglip2-b16-224", "siglip", "google/siglip2-base-patch16-224", 224, 768, 768, 14
        ),  # fixed-resolution SigLIP2: SigLIP's architecture
        _e("siglip2-so400m-p14-384", "siglip", "google/siglip2-so400m-patch14-384", 384, 1152, 1152, 27),
        _e("siglip2-g-opt-p16-384", "siglip", "google/siglip2-giant-opt-patch16-384", 384, 1536, 1536, 24),
        _e("dinov3-vits16", "dinov3", "facebook/dinov3-vits16-pretrain-lvd1689m", 224, 384, 384, 14),
        _e("dinov3-vitb16", "dinov3", "facebook/dinov3-vitb16-pretrain-lvd1689m", 224, 768, 768, 14),
        _e("dinov3-vitl16", "dinov3", "facebook/dinov3-vitl16-pretrain-lvd1689m", 224, 1024, 1024, 14),
        _e("dinov3-vith16plus", "dinov3", "facebook/dinov3-vith16plus-pretrain-lvd1689m", 224, 1280, 1280, 14),
        # 6.7 B parameters: 13.4 GB in bf16, its compute dtype by default (27 GB in fp32)
        _e("dinov3-vit7b16", "dinov3", "facebook/dinov3-vit7b16-pretrain-lvd1689m", 224, 4096, 4096, 14, "bf16"),
        _e("sam2.1-hiera-b+", "sam2", "facebook/sam2.1-hiera-base-plus", 1024, None, 256, 64),
        _e("sam2.1-hiera-l", "sam2", "facebook/sam2.1-hiera-large", 1024, None, 256, 64),
        _e("sam3", "sam3", "facebook/sam3", 1008, None, 256, 72),
        _e("sam3-trunk", "sam3-trunk", "facebook/sam3", 1008, None, 1024, 72),  # C-RADIOv4's SAM3 target
        _e("tiny-clip", "clip", "tiny:tiny-clip", 32, 24, 32, 4),
        _e("tiny-dinov2", "dinov2", "tiny:tiny-dinov2", 28, 32, 32, 7),
        _e("tiny-sam", "sam", "tiny:tiny-sam", 64, None, 16, 8),
        _e("tiny-siglip", "siglip", "tiny:tiny-siglip", 32, 32, 32, 4),
        _e("tiny-siglip2", "siglip", "tiny:tiny-siglip2", 32, 32, 32, 4),
        _e("tiny-dinov3", "dinov3", "tiny:tiny-dinov3", 28, 32, 32, 7),
        _e("tiny-sam2", "sam2", "tiny:tiny-sam2", 64, None, 16, 4),
        _e("tiny-sam3", "sam3", "tiny:tiny-sam3", 56, None, 16, 4),
        _e("tiny-sam3-trunk", "sam3-trunk", "tiny:tiny-sam3", 56, None, 32, 4),
    ]
}


def list_teachers() -> list[str]:
    return sorted(REGISTRY)


def get_spec_template(name: str) -> RegistryEntry:
    if name not in REGISTRY:
        near = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UnknownTeacher(f"unknown teacher {name!r}.{hint} Registered teachers: {', '.join(list_teachers())}")
    return REGISTRY[name]


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def _exact_fp32(device: torch.device, dtype: str):
    """fp32 means fp32: on CUDA, matmuls and cuDNN convolutions would otherwise be free to use TF32 (PyTorch
    allows it for convolutions by default), numbers no CPU build reproduces. Other dtypes are untouched."""
    if device.type != "cuda" or dtype != "fp32":
        yield
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy TF32 flags warn in favour of fp32_precision; they still rule
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def _quiet_transformers():
    """Loading a vision tower from a full checkpoint reports the unused text/decoder weights; hide that."""
    from transformers.utils import logging as hf_logging

    v = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(v)
        if bars:
            hf_logging.enable_progress_bar()


def _check_local_dir(path: Path, family: str):
    if not path.is_dir():
        raise TeacherLoadError(
            f"teacher source {path} does not exist (expected a directory written by save_pretrained, or a hub id)"
        )
    if not (path / "config.json").is_file():
        raise TeacherLoadError(f"{path} has no config.json: not a transformers checkpoint directory")
    if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
        extra = (
            " (it has pytorch_model.bin: only safetensors weights are loaded, convert "
            "them with save_pretrained(safe_serialization=True))"
            if (path / "pytorch_model.bin").exists()
            else ""
        )
        raise TeacherLoadError(f"{path} has no model.safetensors weights{extra}")
    if not (path / "preprocessor_config.json").is_file():
        raise TeacherLoadError(
            f"{path} has no preprocessor_config.json: the image-processor config must be saved "
            "with the weights (processor.save_pretrained)"
        )
    mt = model_type_of(str(path), None)
    if mt not in FAMILIES[family].model_types:
        raise TeacherLoadError(
            f"{path}/config.json is model_type {mt!r}, but a {family} teacher needs "
            f"one of {list(FAMILIES[family].model_types)}"
        )


def _weight_files(src: str, revision: str | None) -> list[Path]:
    """The checkpoint's safetensors files: the shards its index lists, or its one model.safetensors. A hub id's are
    in the local hub cache, where loading it has just put them."""
    local = Path(src)
    if local.is_dir():
        index = local / "model.safetensors.index.json"
        if index.is_file():
            return [local / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        return [local / "model.safetensors"]
    from transformers.utils.hub import cached_file

    def hub_file(name: str) -> Path:
        path = cached_file(src, name, revision=revision)
        if path is None:
            raise TeacherLoadError(f"{src}: {name} is not in the hub cache")
        return Path(path)

    index = cached_file(
        src, "model.safetensors.index.json", revision=revision, _raise_exceptions_for_missing_entries=False
    )
    if index is None:
        return [hub_file("model.safetensors")]
    names = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
    return [hub_file(f) for f in names]


def _file_sha256(path: Path) -> str:
    """sha256 of one weights file. In the hub cache an LFS file is stored as ``blobs/<its sha256>``, the hash the hub
    records for it: nothing is read. Otherwise the file is streamed (16 MiB at a time, nothing kept) and the result
    memoized under RADIO_HOME by path, size, inode and modification time, the identity ``source_key`` trusts too."""
    real = path.resolve()
    if real.parent.name == "blobs" and len(real.name) == 64 and all(c in "0123456789abcdef" for c in real.name):
        return real.name
    st = real.stat()
    key = hashlib.sha256(f"{real}|{st.st_size}|{st.st_ino}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = radio_home() / "sha256" / key
    if memo.is_file():
        return memo.read_text().strip()
    h, buf = hashlib.sha256(), bytearray(16 << 20)
    view = memoryview(buf)
    with open(real, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])  # hashlib releases the GIL: this runs beside the load
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{key}.{os.getpid()}")
    tmp.write_text(h.hexdigest())
    os.replace(tmp, memo)
    return h.hexdigest()


def _weights_sha256(files: list[Path]) -> str:
    """The weights' identity: sha256 over the checkpoint's safetensors files (each file's name and sha256).

    The files, not the loaded tensors: a teacher loaded in bf16 from an fp32 checkpoint has the same weights hash as
    in fp32 (its dtype is a field of its own), and hashing never needs a pass over the loaded weights. The same files
    in another directory give the same hash; the same tensors sharded otherwise give another one (their targets are
    recomputed, never wrongly reused).
    """
    return hashlib.sha256(json.dumps([[f.name, _file_sha256(f)] for f in files]).encode()).hexdigest()


def tensor_sha256(model: torch.nn.Module) -> str:
    """The weights hash radio recorded before 2026-12-05: sorted names, dtypes, shapes and bytes of the loaded
    tensors. Computed only to recognise a cache written then (its fingerprint hashed the tensors, today's the files):
    the same weights loaded in the same dtype give the same hash, and that cache's targets stand."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name.removeprefix('_orig_mod.')}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _size(d, key):
    if d is None:
        return None
    return d.get(key) if isinstance(d, dict) else getattr(d, key, None)


class Teacher(torch.nn.Module):
    """A frozen teacher: ``teacher(images)`` -> :class:`TeacherOutput`.

    ``images``: a list of uint8 (3, H, W) tensors of any sizes, or a uint8 (B, 3, H, W) tensor.
    """

    def __init__(self, spec: TeacherSpec, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.spec, self.model, self.device = spec, model, device
        self.family = FAMILIES[spec.family]
        self._mean = torch.tensor(spec.mean, dtype=torch.float32)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # frozen: always in eval mode
        return super().train(False)

    def input_size_for(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) the whole view of size ``h x w`` is resized to (before SAM's padding). See :class:`TeacherSpec`."""
        return input_size(self.spec, h, w)

    def preprocess(self, images, resized: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """-> (pixel_values: one float32 (3, h, w) per image on the device, extents (B, 2) float32).

        ``extents`` is the view's extent on that image's feature grid, in cells (fractional for SAM, whose
        padding covers the rest of its grid; the whole grid otherwise).

        ``resized=True``: the images are already at this teacher's input size (resized with Pillow by
        :func:`~teachers.preprocess.pillow_resize`, as the cache job's prepare tasks do); only the
        normalization and padding run here. An image that is not at an input size of this teacher is
        refused rather than resized twice.
        """
        s = self.spec
        if (
            isinstance(images, torch.Tensor)
            and images.ndim == 4
            and images.dtype == torch.uint8
            and images.shape[1] == 3
            and len(images)
        ):
            return self._preprocess_batch(images, resized)
        items = list(images.unbind(0)) if isinstance(images, torch.Tensor) and images.ndim == 4 else list(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(items):
            if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(
                    f"teacher {s.name} expects uint8 RGB images shaped "
                    f"(3, H, W), got {tuple(getattr(img, 'shape', ()))} "
                    f"{getattr(img, 'dtype', type(img).__name__)}"
                )
            groups.setdefault(tuple(img.shape[1:]), []).append(i)
        # Same-size images go through the device as one batch: one copy, one resize, one normalization.
        pixels, extents = [None] * len(items), torch.zeros((len(items), 2), dtype=torch.float32)
        for idx in groups.values():
            px, ext = self._preprocess_batch(torch.stack([items[i] for i in idx]), resized)
            for j, i in enumerate(idx):
                pixels[i] = px[j]
            extents[idx] = ext
        return pixels, extents

    def _preprocess_batch(
        self, images_B3HW: torch.Tensor, resized: bool = False
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Same-size images: one resize call for the whole batch. pil_resize treats every channel alike, so
        B images of 3 channels resize as one (3B, H, W) image, bitwise equal to resizing them one by one.
        On CUDA the uint8 batch is copied from pinned memory without blocking the host."""
        s = self.spec
        B, _, H, W = images_B3HW.shape
        size = self.input_size_for(H, W)
        if resized and size != (H, W):
            raise ValueError(
                f"teacher {s.name} was handed a {H}x{W} image as already resized, but its input for such "
                f"a view is {size[0]}x{size[1]}: "
                "the image was resized for another teacher (pass resized=False to resize it here)"
            )
        x = images_B3HW
        if s.interpolation == "torchvision-bilinear":
            x = torchvision_resize(x, size)  # uint8, on the host, where the official processor runs it
        if self.device.type == "cuda":
            x = x.contiguous().pin_memory()
        x = x.to(self.device, non_blocking=True)
        if s.interpolation == "torchvision-bilinear-float":  # DINOv3's processor: rescale, resize in float32, normalize
            x = torchvision_resize(x.to(torch.float32) * s.rescale_factor, size)
        else:
            if s.interpolation != "torchvision-bilinear":
                x = pil_resize(x.reshape(B * 3, H, W), size, s.interpolation).reshape(B, 3, *size)
            x = (x.to(torch.float64) * s.rescale_factor).to(torch.float32)
        mean = torch.as_tensor(s.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(s.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        if s.pad_size is not None:
            x = torch.nn.functional.pad(x, (0, s.pad_size[1] - size[1], 0, s.pad_size[0] - size[0]), value=0.0)
        extents = torch.tensor([[size[0] / s.patch_size, size[1] / s.patch_size]], dtype=torch.float32).expand(B, 2)
        return list(x.unbind(0)), extents.contiguous()

    @torch.inference_mode()
    def forward(self, images, resized: bool = False) -> TeacherOutput:
        """Images of any sizes -> summaries and feature maps. Inputs of one size run as one batch; when a
        batch mixes sizes (non-square views of a ``fit_aspect`` teacher) the feature maps are zero-padded
        bottom/right to the largest grid and ``valid_hw_B2`` gives each one's extent. ``resized``: see
        :meth:`preprocess`."""
        pixels, extents = self.preprocess(images, resized)
        dtype = _DTYPES[self.spec.dtype]
        p = self.spec.patch_size
        groups: dict[tuple[int, int], list[int]] = {}
        for i, x in enumerate(pixels):
            groups.setdefault(tuple(x.shape[1:]), []).append(i)
        summaries, feats = [None] * len(pixels), [None] * len(pixels)
        for (h, w), idx in groups.items():
            # The model's weights and inputs are in the spec's dtype and nothing else changes it (no autocast):
            # the numerics are what the fingerprint says, fp32 included, on every device.
            with _exact_fp32(self.device, self.spec.dtype):
                summary, f = self.family.forward(self.model, torch.stack([pixels[i] for i in idx]).to(dtype))
            f = to_grid(f, (h // p, w // p) if self.spec.pad_size is None else self.spec.feature_grid).float()
            for j, i in enumerate(idx):
                feats[i] = f[j]
                summaries[i] = summary[j].float() if summary is not None else None
        gh, gw = max(f.shape[0] for f in feats), max(f.shape[1] for f in feats)
        if len(groups) == 1:
            feats_BHWC = torch.stack(feats)
        else:
            feats_BHWC = feats[0].new_zeros((len(feats), gh, gw, feats[0].shape[-1]))
            for i, f in enumerate(feats):
                feats_BHWC[i, : f.shape[0], : f.shape[1]] = f
        summary_BD = torch.stack(summaries) if summaries[0] is not None else None
        return TeacherOutput(summary_BD, feats_BHWC, extents)  # extents stay on the host, where they were computed


def _locate(name: str, source: str | None) -> tuple[RegistryEntry, str, Path | None]:
    """(registry entry, the source to load, its local directory or None for a tiny preset or a hub id)."""
    entry = get_spec_template(name)
    src = source or entry.source
    if src.startswith("tiny:"):
        return entry, src, None
    local = Path(src).expanduser()
    return entry, src, local if local.exists() or src.startswith(("/", ".", "~")) else None


def _hub_config(src: str, revision: str | None) -> str:
    """The local path of a hub checkpoint's config.json (downloaded, or from the hub cache when offline)."""
    from transformers.utils import cached_file

    with _quiet_transformers():
        return cached_file(src, "config.json", revision=revision)


def check_source(name: str, source: str | None = None, revision: str | None = None) -> str:
    """Where teacher ``name``'s weights would load from, checked without loading them (seconds, no GPU):
    a local directory must hold a checkpoint of the right family; a hub id must be reachable, or in the
    local hub cache when offline. Raises :class:`TeacherLoadError` naming the teacher, source and fix."""
    entry, src, local = _locate(name, source)
    if src.startswith("tiny:"):
        return src
    if local is not None:
        try:
            _check_local_dir(local, entry.family)
        except TeacherLoadError as e:
            raise TeacherLoadError(f"teacher {name}: {e}") from None
        return str(local.resolve())
    try:
        _hub_config(src, revision)
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise TeacherLoadError(
            "cannot load teacher "
            f"{name} from {src!r}{' (HF_HUB_OFFLINE=1: only local files are used)' if offline else ''}: "
            f"{type(e).__name__}: {str(e).splitlines()[0]}. Pass a local directory "
            f"with teachers.{name}.source=/path/to/checkpoint"
        ) from None
    return src


def source_key(name: str, source: str | None = None, revision: str | None = None) -> str:
    """A cheap identity of the weights teacher ``name`` would load, without loading them (milliseconds): the
    tiny preset's name; a local directory's file names, sizes and modification times; a hub id's resolved
    snapshot (its commit hash) or, when it cannot be resolved, the id and revision. Equal keys let a job trust
    targets already computed without loading the teacher; a different key means the teacher is loaded and its
    fingerprint (a hash of the loaded weights) decides."""
    entry, src, local = _locate(name, source)
    if src.startswith("tiny:"):
        return src
    if local is not None:
        files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else []
        return (
            "dir:"
            + hashlib.sha256(
                json.dumps(
                    [(p.relative_to(local).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
                ).encode()
            ).hexdigest()[:16]
        )
    rev = revision if revision is not None else entry.revision
    try:
        return f"hub:{src}@{Path(_hub_config(src, rev)).parent.name}"  # .../snapshots/<commit>/config.json
    except Exception:
        return f"hub:{src}@{rev}"


def create_teacher(
    name: str,
    *,
    source: str | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    device: str | torch.device = "cpu",
    compile: bool = False,
    input_size: int | None = None,
) -> Teacher:
    """Load registry teacher ``name``, frozen, on ``device``.

    ``input_size``: run a teacher that takes any size (its processor resizes the shortest edge: CLIP, DINOv2,
    DINOv3) at this square input instead of its processor's, e.g. DINOv3 at 1152 px for C-RADIOv4's high
    partition (a multiple of its patch; recorded in the spec and fingerprint). Fixed-size teachers refuse it.

    ``source`` overrides the registry's hub id (a hub id or a local directory); ``revision`` pins a hub
    revision; ``dtype`` is fp32, bf16 or fp16; ``compile``: run the model through ``torch.compile`` (recorded
    in the spec and fingerprint). Offline (``HF_HUB_OFFLINE=1``) only local directories and the local hub
    cache are used.
    """
    entry = get_spec_template(name)
    dtype = dtype or entry.dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} for teacher {name}: use one of {list(_DTYPES)}")
    revision = revision if revision is not None else entry.revision
    src = source or entry.source
    if src.startswith("tiny:"):
        src = materialize_tiny(src[len("tiny:") :])
    device = torch.device(device)
    family = FAMILIES[entry.family]
    local = Path(src).expanduser()
    if local.exists() or src.startswith(("/", ".", "~")):
        _check_local_dir(local, entry.family)
        src = str(local.resolve())
    # The weights load straight into the compute dtype (transformers casts shard by shard; a bf16 checkpoint loaded in
    # bf16 is not copied at all), never through an fp32 copy: a 7B teacher is 13.4 GB in bf16, 27 GB in fp32.
    # A local checkpoint's files are hashed beside the load (disk read once, the hash rides the page cache).
    hashing = None
    if Path(src).is_dir():
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1)
        hashing = pool.submit(_weights_sha256, _weight_files(src, revision))
        pool.shutdown(wait=False)
    try:
        with _quiet_transformers():
            model = family.load(src, revision, _DTYPES[dtype])
            processor = _processor(src, revision, family)
            weights = hashing.result() if hashing is not None else _weights_sha256(_weight_files(src, revision))
    except TeacherLoadError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise TeacherLoadError(
            "cannot load teacher "
            f"{name} from {src!r}{' (HF_HUB_OFFLINE=1: only local files are used)' if offline else ''}: "
            f"{type(e).__name__}: {str(e).splitlines()[0]}. Pass a local directory "
            f"with teachers.{name}.source=/path/to/checkpoint"
        ) from None
    # A no-op on the host for tensors already in the dtype; casts what transformers keeps in fp32 (as before).
    model = model.to(device=device, dtype=_DTYPES[dtype]).eval().requires_grad_(False)
    spec = _spec_from(entry, src, revision, dtype, processor, model, family, weights)
    if input_size is not None and input_size != spec.input_size[0]:
        if spec.resize != "fit_aspect" or input_size < spec.patch_size or input_size % spec.patch_size:
            raise ValueError(
                f"teachers.{name}.input_size={input_size}: "
                + (
                    f"{name} takes one input size ({spec.input_size[0]}x{spec.input_size[1]}, resize rule "
                    f"{spec.resize}); only teachers that take any size (CLIP, DINOv2, DINOv3) can be run at another"
                    if spec.resize != "fit_aspect"
                    else f"must be a positive multiple of {name}'s patch ({spec.patch_size}), e.g. "
                    f"{max(1, input_size // spec.patch_size) * spec.patch_size}"
                )
            )
        g = input_size // spec.patch_size
        spec = replace(spec, input_size=(input_size, input_size), resize_size=input_size, feature_grid=(g, g))
        spec = spec.with_fingerprint()
    if compile:
        # Inputs of a fit_aspect teacher vary in width: after the second shape dynamo marks them dynamic.
        model = torch.compile(model)
        spec = replace(spec, compiled=True).with_fingerprint()
    return Teacher(spec, model, device)


class _ProcessorFacts:
    """The saved image-processor config of a torchvision-only processor (DINOv3, SAM2, SAM3), read as data:
    their classes cannot be built without torchvision, and the facts we need are all in the JSON."""

    def __init__(self, d: dict):
        self.size = d.get("size")
        self.crop_size, self.pad_size = d.get("crop_size"), d.get("pad_size")
        self.do_center_crop, self.do_pad = bool(d.get("do_center_crop")), bool(d.get("do_pad"))
        self.resample = d.get("resample", 2)
        self.rescale_factor = d.get("rescale_factor", 1 / 255)
        self.image_mean, self.image_std = d.get("image_mean"), d.get("image_std")
        if not self.size or self.image_mean is None or self.image_std is None:
            raise ValueError(f"image-processor config lacks size, image_mean or image_std: {sorted(d)}")


def _processor(src, revision, family):
    from transformers import AutoImageProcessor

    if family.resize == "pillow":
        return AutoImageProcessor.from_pretrained(src, revision=revision)
    from transformers.image_processing_utils import ImageProcessingMixin

    d, _ = ImageProcessingMixin.get_image_processor_dict(src, revision=revision)
    return _ProcessorFacts(d)


def _spec_from(entry: RegistryEntry, src, revision, dtype, p, model, family, weights) -> TeacherSpec:
    """The spec, from the checkpoint's own image-processor config. Every teacher takes the whole view:

    - a processor that resizes the shortest edge and center-crops (CLIP, DINOv2) would show the teacher only
      the middle of the view (DINOv2: 224 of 256, 87.8 % of the area); the view is instead resized to the
      crop size (``fit_aspect``), which is the official processor called with ``do_center_crop=False`` and
      ``size`` = the crop size;
    - longest edge + pad (SAM) already covers the view (``longest_edge_pad``), the padding is outside it;
    - a fixed size (SigLIP) already covers the view (``exact``).
    """
    size, crop, pad = p.size, getattr(p, "crop_size", None), getattr(p, "pad_size", None)
    cfg = model.config
    patch = int(family.stride(cfg))
    if _size(size, "longest_edge") and getattr(p, "do_pad", False):
        rule, rsize, pad_hw = (
            "longest_edge_pad",
            int(_size(size, "longest_edge")),
            (int(_size(pad, "height")), int(_size(pad, "width"))),
        )
        input_hw = pad_hw
    elif _size(size, "shortest_edge"):
        pad_hw = None
        if getattr(p, "do_center_crop", False):
            input_hw = (int(_size(crop, "height")), int(_size(crop, "width")))
        else:
            input_hw = (int(_size(size, "shortest_edge")),) * 2
        if input_hw[0] != input_hw[1] or input_hw[0] % patch:
            raise TeacherLoadError(
                f"{src}: crop size {input_hw} is not a square multiple of the patch {patch}; "
                "the whole-view rule needs one"
            )
        rule, rsize = "fit_aspect", input_hw[0]
    else:
        rule, rsize, pad_hw = "exact", (int(_size(size, "height")), int(_size(size, "width"))), None
        input_hw = rsize
    grid = (input_hw[0] // patch, input_hw[1] // patch)
    summary_dim, feature_dim = family.dims(cfg)
    resample = PIL_CODES.get(int(p.resample), None)
    if resample is None or (family.resize != "pillow" and resample != "bilinear"):
        raise TeacherLoadError(
            f"{src}: image processor resample={p.resample} "
            f"is not {'bilinear or bicubic' if family.resize == 'pillow' else 'bilinear'}"
        )
    if family.resize != "pillow":
        resample = "torchvision-bilinear-float" if family.resize == "torchvision-float" else "torchvision-bilinear"
    spec = TeacherSpec(
        name=entry.name,
        family=entry.family,
        source=src,
        revision=revision,
        input_size=tuple(input_hw),
        resize=rule,
        resize_size=rsize,
        pad_size=pad_hw,
        interpolation=resample,
        rescale_factor=float(p.rescale_factor),
        mean=tuple(float(v) for v in p.image_mean),
        std=tuple(float(v) for v in p.image_std),
        patch_size=int(patch),
        summary_dim=summary_dim,
        feature_dim=int(feature_dim),
        feature_grid=grid,
        dtype=dtype,
        attention=str(getattr(cfg, "_attn_implementation", None) or "eager"),
        output=family.output,
        weights_sha256=weights,
    )
    return spec.with_fingerprint()
