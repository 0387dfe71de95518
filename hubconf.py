"""torch.hub entry points: ``torch.hub.load(CHECKOUT_OR_GITHUB_REPO, "radio_student", REF)``.

``REF`` is a student directory, a Hugging Face hub id (``org/name``) or an MLflow run id / URI, exactly as
``radio.load_student`` takes it. Weights are safetensors; nothing is unpickled.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radio.model import RadioModel

dependencies = ["torch", "safetensors"]


def radio_student(
    ref: str,
    adaptor_names: list[str] | str | None = None,
    device: str = "cpu",
    revision: str | None = None,
    **kwargs,
) -> "RadioModel":
    """A distilled student with NVIDIA RADIO's API (``summary, features = model(x)``)."""
    from radio import load_student

    return load_student(ref, device=device, adaptor_names=adaptor_names, revision=revision, **kwargs)


def radio_model(
    version: str = "",
    progress: bool = True,
    adaptor_names: list[str] | str | None = None,
    neck_name: str | None = None,
    vitdet_window_size: int | None = None,
    return_checkpoint: bool = False,
    return_summary: bool = True,
    return_spatial_features: bool = True,
    support_packing: bool = False,
    device: str = "cpu",
    revision: str | None = None,
    **kwargs,
) -> "RadioModel | tuple[RadioModel, dict]":
    """NVlabs/RADIO's entry point and signature: ``torch.hub.load(REPO, "radio_model", version=STUDENT,
    progress=True, skip_validation=True, adaptor_names=[...])``. ``version`` names a radio student: a student
    directory, a Hugging Face hub id (``org/name``) or an MLflow run id / URI.

    As RADIO's: ``vitdet_window_size`` (ViTDet mode; None: global attention, whatever the student trained with);
    ``return_checkpoint=True`` returns ``(model, checkpoint)``, the checkpoint a dict with RADIO's ``args``
    (``args.teachers``: one dict per teacher, ``name``, ``type`` (its family), ``model`` (its source),
    ``use_summary``), the ``state_dict`` and the student's ``config``; ``neck_name=None`` (a radio student has no
    necks); ``return_summary`` / ``return_spatial_features`` are accepted and, as in RADIO, change nothing (the
    model returns ``(summary, features)``). ``progress`` is accepted (hub downloads go through huggingface_hub).
    What radio cannot honour is refused in one line."""
    if not version:
        raise ValueError(
            "radio_model: version= names the student to load (a student directory, a Hugging Face hub id "
            "org/name, or an MLflow run id / "
            "runs:/ or models:/ URI); radio ships no pretrained RADIO checkpoints"
        )
    if neck_name is not None:
        raise ValueError(
            f"radio_model: neck_name={neck_name!r}: a radio student has no necks (RADIO's 1D encoders); leave it None"
        )
    if support_packing:
        raise ValueError(
            "radio_model: support_packing=True (variable-length packed sequences) is not supported; "
            "pass image batches (B, 3, H, W)"
        )
    if kwargs:
        raise TypeError(
            f"radio_model: unsupported option(s) {sorted(kwargs)}; supported: version, progress, adaptor_names, "
            "neck_name=None, vitdet_window_size, return_checkpoint, return_summary, return_spatial_features, "
            "device, revision"
        )
    model = radio_student(
        version, adaptor_names=adaptor_names, device=device, revision=revision, vitdet_window_size=vitdet_window_size
    )
    if not return_checkpoint:
        return model
    from types import SimpleNamespace

    teachers = model.meta.get("teachers", {})
    summary = set(model.config.summary_teachers)
    args = SimpleNamespace(
        teachers=[
            {
                "name": t,
                "type": teachers.get(t, {}).get("family"),
                "model": teachers.get(t, {}).get("source"),
                "use_summary": t in summary,
            }
            for t in model.teacher_names
        ],
        model=f"radio-student-{model.config.size}",
        patch_size=model.patch_size,
    )
    checkpoint = {
        "args": args,
        "state_dict": model.model.state_dict(),
        "config": {"student": model.config, "meta": model.meta},
    }
    return model, checkpoint
