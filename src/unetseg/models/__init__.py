"""The U-Net family: ``build_model(name, ...)`` for unet, unet_pp, attention_unet, r2unet,
r2_attention_unet and res_unet, in 2D and 3D, from one set of shared blocks (layers -> blocks -> encoder
-> one module per family -> registry)."""

from __future__ import annotations

from unetseg.models.attention_unet import AttentionUNet
from unetseg.models.base import SegmentationModel
from unetseg.models.init import INITS, init_weights
from unetseg.models.r2unet import R2AttentionUNet, R2UNet
from unetseg.models.registry import (
    available_models,
    build_model,
    count_parameters,
    describe_model,
    model_options,
)
from unetseg.models.res_unet import ResUNet
from unetseg.models.sizes import (
    min_valid_input_size,
    nearest_valid_input_size,
    valid_border,
    valid_input_sizes,
    valid_output_size,
)
from unetseg.models.unet import EncoderDecoder, UNet
from unetseg.models.unet_pp import UNetPlusPlus

__all__ = [
    "available_models",
    "build_model",
    "count_parameters",
    "describe_model",
    "model_options",
    "init_weights",
    "INITS",
    "SegmentationModel",
    "EncoderDecoder",
    "UNet",
    "UNetPlusPlus",
    "AttentionUNet",
    "R2UNet",
    "R2AttentionUNet",
    "ResUNet",
    "valid_output_size",
    "valid_input_sizes",
    "nearest_valid_input_size",
    "min_valid_input_size",
    "valid_border",
]
