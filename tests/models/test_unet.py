"""The canonical 2015 U-Net: parameter count, the unpadded ("valid") network and overlap-tile sizes."""

from __future__ import annotations

import pytest
import torch

from unetseg.errors import ConfigError
from unetseg.models import build_model, count_parameters, valid_output_size


def test_canonical_unet_has_the_2015_parameter_count():
    # Ronneberger et al. 2015, Fig. 1: 1 input channel, 2 classes, widths 64..1024, no normalisation.
    # A 3x3 conv has 9*in*out weights + out biases; a 2x2 up-conv 4*in*out + out; the head 1x1 in*out + out.
    # Encoder (two 3x3 convs per level):
    #   1->64: 9*1*64+64 = 640            64->64: 9*64*64+64 = 36,928
    #   64->128: 9*64*128+128 = 73,856    128->128: 9*128*128+128 = 147,584
    #   128->256: 295,168                 256->256: 590,080
    #   256->512: 1,180,160               512->512: 2,359,808
    #   512->1024: 4,719,616              1024->1024: 9,438,208          encoder total 18,842,048
    # Decoder (up-conv halving the width, then 3x3 convs over the concatenation 2*out -> out, out -> out):
    #   1024->512: up 4*1024*512+512 = 2,097,664 + 9*1024*512+512 = 4,719,104 + 2,359,808 = 9,176,576
    #   512->256:  up 524,544 + 1,179,904 + 590,080 = 2,294,528
    #   256->128:  up 131,200 + 295,040 + 147,584 = 573,824
    #   128->64:   up 32,832 + 73,792 + 36,928 = 143,552               decoder total 12,188,480
    # Head 1x1: 64*2+2 = 130.
    # Total: 18,842,048 + 12,188,480 + 130 = 31,030,658.
    model = build_model(
        "unet", in_channels=1, num_classes=2, base_channels=64, depth=4, norm="none", upsample="transpose"
    )
    assert count_parameters(model) == 31_030_658


def test_valid_unet_maps_572_to_388_as_in_the_paper():
    model = build_model("unet", base_channels=2, depth=4, norm="none", padding="valid")  # sizes ignore width
    assert model.output_size((572, 572)) == (388, 388)
    assert valid_output_size(572, depth=4) == 388
    with torch.no_grad():
        out = model(torch.randn(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


def test_valid_unet_tiles_seamlessly():
    # Overlap-tile (paper Fig. 2): a tile's output equals the matching crop of the whole image's output, when
    # the tile starts at a multiple of 2**depth (so the pooling grids line up).
    torch.manual_seed(0)
    model = build_model("unet", base_channels=2, depth=2, norm="none", padding="valid").eval()
    image = torch.randn(1, 1, 64, 72)
    with torch.no_grad():
        whole = model(image)
        tile = model(image[:, :, 4:52, 8:56])
    assert whole.shape[2:] == (24, 32) and tile.shape[2:] == (8, 8)
    torch.testing.assert_close(tile, whole[:, :, 4:12, 8:16])


def test_valid_unet_3d():
    model = build_model("unet", spatial_dims=3, base_channels=2, depth=1, norm="none", padding="valid")
    assert model.output_size((18, 22, 26)) == (2, 6, 10)
    assert model(torch.randn(1, 1, 18, 22, 26)).shape == (1, 2, 2, 6, 10)


def test_valid_unet_rejects_sizes_it_cannot_take():
    model = build_model("unet", base_channels=2, depth=4, padding="valid")
    with pytest.raises(ConfigError, match="minimum is 188"):
        model(torch.randn(1, 1, 100, 572))
    with pytest.raises(ConfigError, match="use 572 or 588"):
        model(torch.randn(1, 1, 580, 572))
    with pytest.raises(ConfigError, match="use 572 or 588"):
        model.output_size((580, 572))
    assert model.valid_input_size((580, 100)) == (588, 188)


def test_same_padding_takes_inputs_smaller_than_2_pow_depth():
    model = build_model("unet", base_channels=2, depth=3).eval()  # batch norm needs >1 value in training
    assert model(torch.randn(1, 1, 5, 7)).shape == (1, 2, 5, 7)
