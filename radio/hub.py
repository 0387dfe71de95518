"""Students on the Hugging Face hub: ``save_pretrained`` / ``push_to_hub`` / download by hub id.

A hub repository holds exactly a student directory (``model.safetensors`` + ``config.json``) plus a
generated model card (``README.md``: teachers and their fingerprints, cache id, eval metrics, how to
load). ``huggingface_hub`` (installed with transformers) is imported only here, and only when used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any  # the model arguments: a radio.model.RadioModel (which imports this module)

__all__ = ["save_pretrained", "push_to_hub", "download", "model_card"]

FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")


def model_card(model: Any, repo_id: str | None = None) -> str:
    """A README for the hub: YAML header, what the student is, where its targets came from, how to load it."""
    cfg, meta = model.config, model.meta
    name = repo_id or "PATH_OR_HUB_ID"
    teachers = meta.get("teachers", {})
    rows = "\n".join(
        f"| `{t}` | {teachers.get(t, {}).get('family', '?')} | `{teachers.get(t, {}).get('source', '?')}` "
        f"| `{meta.get('fingerprints', {}).get(t, '?')}` |"
        for t in model.teacher_names
    )
    metrics = meta.get("eval", {})
    metric_rows = (
        "\n".join(f"| `{k}` | {v:.4f} |" for k, v in sorted(metrics.items()))
        if metrics
        else "| (not evaluated yet: `radio eval`) | |"
    )
    res = model.preferred_resolution
    return f"""---
library_name: radio-distill
tags:
- vision
- feature-extraction
- knowledge-distillation
- radio
pipeline_tag: image-feature-extraction
---

# {name}

An agglomerative ViT student (size `{cfg.size}`: dim {cfg.dim}, depth {cfg.depth}, patch {cfg.patch_size}) distilled
with radio (the open agglomerative-distillation pipeline) from {len(model.teacher_names)} frozen teachers at
{res.height}x{res.width} px.
It has NVIDIA RADIO's API: `summary, features = model(x)`, and one adaptor per teacher that predicts that
teacher's own outputs.

## Teachers

| teacher | family | source | fingerprint |
|---|---|---|---|
{rows}

Targets came from cache `{meta.get("cache_id", "?")}`; training run `{meta.get("mlflow_run_id") or "-"}` (MLflow).

## Evaluation

| metric | value |
|---|---|
{metric_rows}

## Use

```python
import torch, radio

model = radio.load_student("{name}", adaptor_names={model.teacher_names[:1]!r})
x = torch.rand(1, 3, {res.height}, {res.width})  # float in [0, 1], sides multiples of {cfg.patch_size}
out = model(x)
summary, features = out["backbone"]        # (1, {model.summary_dim}), (1, N, {cfg.dim})
teacher_summary, teacher_features = out[{model.teacher_names[0]!r}]
```

With transformers, after `import radio` (no remote code):

```python
import radio
from transformers import AutoImageProcessor, AutoModel, pipeline

processor = AutoImageProcessor.from_pretrained("{name}")  # resize to {res.height}x{res.width}, scale to [0, 1]
model = AutoModel.from_pretrained("{name}")
summary, features = model(pixel_values=processor(images=image, return_tensors="pt").pixel_values)
extractor = pipeline("image-feature-extraction", model="{name}")
```

Or, from a checkout of the project: `torch.hub.load(CHECKOUT, "radio_student", "{name}", source="local")`.
Weights are safetensors; nothing is unpickled.
"""


def save_pretrained(model: Any, save_directory: str | Path, card: bool = True, repo_id: str | None = None) -> Path:
    """Write ``model`` (a RadioModel) as a student directory loadable by ``radio.load_student``."""
    from .checkpoint import save_student

    d = save_student(save_directory, model.model, model.meta)
    if card:  # a local directory's card names the directory: it is what load_student takes
        (d / "README.md").write_text(model_card(model, repo_id or str(d.resolve())))
    return d


def push_to_hub(
    model: Any,
    repo_id: str,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload radio student",
) -> str:
    """Create (or reuse) ``repo_id`` on the hub and upload the student directory; returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, repo_id=repo_id)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message, repo_type="model")
    return str(getattr(info, "commit_url", info))


def download(repo_id: str, revision: str | None = None) -> Path:
    """The local directory of hub student ``repo_id`` (downloaded once into the hub cache; read from that
    cache alone when ``HF_HUB_OFFLINE=1``)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{repo_id}: huggingface_hub is not installed to download it") from None
    try:
        d = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(FILES)))
    except Exception as e:
        raise FileNotFoundError(
            f"hub student {repo_id!r} (revision {revision or 'main'}) could not be found or "
            f"downloaded: {type(e).__name__}: {e}. "
            "Offline (HF_HUB_OFFLINE=1) only the local hub cache is read; pass a directory instead."
        ) from None
    if (
        not (d / "config.json").is_file()
        or json.loads((d / "config.json").read_text()).get("format", "") != "radio-student/1"
    ):
        raise FileNotFoundError(
            f"hub repository {repo_id!r} does not hold a radio student (config.json of format radio-student/1)"
        )
    return d
