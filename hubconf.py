"""torch.hub entry points: ``torch.hub.load(CHECKOUT_OR_GITHUB_REPO, "radio_student", REF)``.

``REF`` is a student directory, a Hugging Face hub id (``org/name``) or an MLflow run id / URI, exactly as
``radio.load_student`` takes it. Weights are safetensors; nothing is unpickled.
"""

dependencies = ["torch", "safetensors"]


def radio_student(ref: str, adaptor_names=None, device: str = "cpu", revision=None, **kwargs):
    """A distilled student with NVIDIA RADIO's API (``summary, features = model(x)``)."""
    from radio import load_student

    return load_student(ref, device=device, adaptor_names=adaptor_names, revision=revision, **kwargs)


radio_model = radio_student  # the name NVlabs/RADIO's hubconf uses
