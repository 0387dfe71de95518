# The RADIO branch of NVlabs/RADIO's examples/common/model_loader.py `load_model` (commit c0f3701), call for
# call, and the calls RADIO's examples make through it: visualize_features.py (lines 136-137, 222-232, 249) and
# zero_shot_imagenet.py / feature_distribution.py (`return_spatial_features=False`). Left out: the other branches
# (DINOv2, open_clip, SAM, ... need timm / open_clip, which this project does not install), `@rank_gate`
# (distributed), the `use_huggingface` branch (RADIO's remote code), and einops' `rearrange` (a permute here).
# Its imports from `radio.` are RADIO's module names.
from dataclasses import dataclass
import os
import sys
from typing import Optional

import torch
from torch import nn

from radio.adaptor_base import RadioOutput
from radio.input_conditioner import InputConditioner
from radio.siglip2_adaptor import SigLIP2WrappedTokenizer


@dataclass
class ModelInfo:
    model_class: str
    model_subtype: str
    checkpoint: Optional[dict] = None


def load_model(version: str, adaptor_names: str = None, use_huggingface: bool = False, use_local_lib: bool = True,
               device: torch.device = None, return_spatial_features: bool = True, force_reload: bool = False, neck_name: str = None,
               torchhub_repo="NVlabs/RADIO", **kwargs):
    kwargs = {k: v for k, v in kwargs.items() if v is not None}

    if os.path.isfile(version) or 'radio' in version:
        if use_local_lib:
            from hubconf import radio_model
            model, chk = radio_model(version=version, progress=True, adaptor_names=adaptor_names, return_checkpoint=True, neck_name=neck_name, **kwargs)
        else:
            model, chk = torch.hub.load(torchhub_repo, 'radio_model', version=version, progress=True,
                                              adaptor_names=adaptor_names, return_spatial_features=return_spatial_features,
                                              force_reload=force_reload,
                                              return_checkpoint=True, neck_name=neck_name, **kwargs,
            )

        preprocessor = model.make_preprocessor_external()
        info = ModelInfo(model_class='RADIO', model_subtype=version.replace('/', '_'), checkpoint=chk)
    else:
        raise ValueError(f'Unsupported model version: {version}')

    if device is not None:
        model.to(device=device)

    return model, preprocessor, info


if __name__ == "__main__":
    version, repo = sys.argv[1], sys.argv[2]
    device = torch.device('cpu')

    # visualize_features.py
    model, preprocessor, info = load_model(version, vitdet_window_size=None, adaptor_names='clip',
                                           torchhub_repo=repo, neck_name=None)
    model.to(device=device).eval()
    if isinstance(preprocessor, nn.Module):
        preprocessor.to(device).eval()
    resolution = (model.preferred_resolution.height, model.preferred_resolution.width)
    images = torch.rand(1, 3, *resolution)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        p_images = preprocessor(images)
        outputs = model.forward_intermediates(
            p_images,
            indices=[1, 3],
            return_prefix_tokens=False,
            norm=False,
            stop_early=True,
            output_fmt='NCHW',
            intermediates_only=True,
            aggregation='dense',
            norm_alpha_scheme="none",
        )
        output = model(p_images, feature_fmt='NCHW')
        all_feat = [
            output['backbone'].features,
            output['clip'].features,
        ]
    all_feat = [f.permute(0, 2, 3, 1).float() for f in all_feat]

    # zero_shot_imagenet.py / feature_distribution.py
    model2, preprocessor2, info2 = load_model(version, adaptor_names='clip', return_spatial_features=False,
                                              vitdet_window_size=2)
    with torch.no_grad():
        summary = model2(preprocessor2(images))['clip'].summary

    # mode_switching.py reads the teachers from the checkpoint's args
    teacher_args = next(t for t in info.checkpoint['args'].teachers if 'clip'.startswith(t['type']))
    cond = InputConditioner(1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    print("RESULT", [tuple(o.shape) for o in outputs], [tuple(f.shape) for f in all_feat], tuple(summary.shape),
          model2.window_size, model2.min_resolution_step, teacher_args['name'], tuple(cond(images).shape),
          isinstance(output['clip'], RadioOutput), SigLIP2WrappedTokenizer.__name__)
