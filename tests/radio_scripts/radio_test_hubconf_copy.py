# A copy of NVlabs/RADIO's test_hubconf.py (commit c0f3701), call for call. Changed: the version comes from argv
# as there, and the device: `.cuda()` / `device='cuda'` are dropped (this copy runs on CPU). It imports
# `radio_model` from the repository's hubconf.py, as RADIO's does.
import sys
import torch
from hubconf import radio_model


if __name__ == "__main__":
    model = radio_model(version=sys.argv[1] if len(sys.argv) > 1 else '')

    x = torch.rand(1, 3, 224, 224)

    with torch.no_grad():
        y = model(x)

        op, (int0,) = model.forward_intermediates(x, indices=[-1], output_fmt='NLC', aggregation='sparse')

        diff = (op.features - int0).norm()
        print(f'Output diff: {diff.item():.8f}')

        y_int1 = model.forward_intermediates(x, indices=[1, 5, 7], output_fmt='NCHW')
        y_int2 = model.forward_intermediates(x, indices=[2, 4, 6], output_fmt='NLC')
        y_int3 = model.forward_intermediates(x, indices=[3, 5, 7], return_prefix_tokens=True, output_fmt='NCHW', aggregation='dense', intermediates_only=True)
        y_int4 = model.forward_intermediates(x, indices=[3, 5, 7], return_prefix_tokens=True, output_fmt='NCHW', aggregation='dense', intermediates_only=True, norm_alpha_scheme='pre-alpha')
        y_int5 = model.forward_intermediates(x, indices=[3, 5, 7], return_prefix_tokens=True, output_fmt='NCHW', aggregation='dense', intermediates_only=True, norm_alpha_scheme='none')
        pass

    model = radio_model(version=sys.argv[1] if len(sys.argv) > 1 else '', adaptor_names=['clip', 'dino_v2'])

    with torch.no_grad():
        y = model(x, feature_fmt='NCHW')
        assert y['backbone'].features.ndim == 4 and y['clip'].features.ndim == 4 and y['dino_v2'].features.ndim == 4
        pass

    # not in RADIO's file: what the test reads back
    print("RESULT", len(y_int1[1]), tuple(y_int1[1][0].shape), tuple(y_int3[0][0].shape), tuple(y_int3[0][1].shape),
          bool(torch.equal(y_int3[0][1], y_int4[0][1]) and torch.equal(y_int4[0][1], y_int5[0][1])), f"{diff.item():.8f}")
