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
    vitdet_window_size: int | None = None,
    return_summary: bool = True,
    return_spatial_features: bool = True,
    support_packing: bool = False,
    return_checkpoint: bool = False,
    device: str = "cpu",
    revision: str | None = None,
    **kwargs,
) -> "RadioModel":
    """NVlabs/RADIO's entry point and signature: ``torch.hub.load(REPO, "radio_model", version=STUDENT,
    progress=True, skip_validation=True, adaptor_names=[...])``. ``version`` names a radio student: a student
    directory, a Hugging Face hub id (``org/name``) or an MLflow run id / URI. ``progress`` is accepted (hub
    downloads go through huggingface_hub). What radio cannot honour is refused in one line."""
    if not version:
        raise ValueError(
            "radio_model: version= names the student to load (a student directory, a Hugging Face hub id "
            "org/name, or an MLflow run id / "
            "runs:/ or models:/ URI); radio ships no pretrained RADIO checkpoints"
        )
    if vitdet_window_size is not None:
        raise ValueError(
            f"radio_model: vitdet_window_size={vitdet_window_size} is not supported: radio "
            "students attend globally in every block "
            "(model.window_size is None); leave it unset"
        )
    if not (return_summary and return_spatial_features):
        raise ValueError(
            "radio_model: return_summary/return_spatial_features=False are not supported: the "
            "model returns (summary, features); take the one you need"
        )
    if support_packing:
        raise ValueError(
            "radio_model: support_packing=True (variable-length packed sequences) is not supported; "
            "pass image batches (B, 3, H, W)"
        )
    if return_checkpoint:
        raise ValueError(
            "radio_model: return_checkpoint=True is not supported: a radio student is safetensors "
            "+ config.json; radio.load_student returns the model"
        )
    if kwargs:
        raise TypeError(
            f"radio_model: unsupported option(s) {sorted(kwargs)}; supported: version, "
            "progress, adaptor_names, device, revision"
        )
    return radio_student(version, adaptor_names=adaptor_names, device=device, revision=revision)
