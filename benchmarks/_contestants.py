"""The networks ``benchmarks/run.py`` compares: unetseg's models and their MONAI / smp counterparts.

unetseg's width-32 U-Net has the widths 32, 64, 128, 256, 512 (depth 4); MONAI ``BasicUNet`` is built with
those same widths (``features=(32, 64, 128, 256, 512, 32)``) for the like-for-like row at unetseg's default,
and at its own default features (32, 32, 64, 128, 256, 32) it is paired with a unetseg ``unet`` given those
widths (``channels=[32, 32, 64, 128, 256]``), the pair the issue names. MONAI ``UNet``
and ``AttentionUnet`` get ``channels=(32, 64, 128, 256, 512)``, ``strides=(2, 2, 2, 2)``; everything else
is the library's default (instance norm, PReLU / LeakyReLU). smp ``UnetPlusPlus`` has a ResNet-34 encoder
(its default) with random weights: a different design than unetseg's nested VGG-style UNet++, so its
params and GFLOPs stand next to its speed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

WIDTHS = (32, 64, 128, 256, 512)
BASIC_WIDTHS = (32, 32, 64, 128, 256)  # MONAI BasicUNet's default features, less its last decoder width

# (impl, name, label) in table order; each of the first two pairs is a goal's pair at the same widths.
TRAIN_ROWS: list[tuple[str, str, str]] = [
    ("unetseg", "unet", "unetseg `unet` (base 32, depth 4)"),
    ("monai", "BasicUNet-same", "MONAI `BasicUNet`, features (32, 64, 128, 256, 512, 32)"),
    ("unetseg", "unet-basic", "unetseg `unet`, channels (32, 32, 64, 128, 256)"),
    ("monai", "BasicUNet", "MONAI `BasicUNet`, default features (32, 32, 64, 128, 256, 32)"),
    ("monai", "UNet", "MONAI `UNet`, channels (32..512), strides 2"),
    ("unetseg", "attention_unet", "unetseg `attention_unet` (base 32, depth 4)"),
    ("monai", "AttentionUnet", "MONAI `AttentionUnet`, channels (32..512), strides 2"),
    ("unetseg", "unet_pp", "unetseg `unet_pp` (base 32, depth 4)"),
    ("smp", "UnetPlusPlus", "smp `UnetPlusPlus` (ResNet-34 encoder, random init)"),
]


def build(impl: str, name: str) -> Any:
    """The network ``name`` of ``impl`` for 1-channel 2D input and 2 classes, seeded, in training mode."""
    import torch

    torch.manual_seed(0)
    if impl == "unetseg":
        from unetseg.models import build_model

        if name == "unet-basic":
            return build_model("unet", num_classes=2, depth=4, channels=list(BASIC_WIDTHS))
        return build_model(
            name, spatial_dims=2, in_channels=1, num_classes=2, base_channels=WIDTHS[0], depth=4
        )
    if impl == "monai":
        from monai.networks import nets

        common = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}
        if name == "BasicUNet-same":
            return nets.BasicUNet(**common, features=(*WIDTHS, WIDTHS[0]))
        if name == "BasicUNet":
            return nets.BasicUNet(**common)
        strides = (2,) * (len(WIDTHS) - 1)
        return getattr(nets, name)(**common, channels=WIDTHS, strides=strides)
    if impl == "smp":
        smp, _ = import_smp()
        return getattr(smp, name)(encoder_name="resnet34", encoder_weights=None, in_channels=1, classes=2)
    raise ValueError(f"unknown implementation {impl!r}")


def import_smp() -> tuple[Any, str]:
    """``segmentation_models_pytorch`` and a note on how it was imported.

    smp imports timm, which imports torchvision. The torchvision wheel pip finds for this torch is a CUDA
    build whose compiled ops cannot load beside the CPU torch; its Python part then fails while
    registering fake kernels for ``torchvision::nms``/``qnms``. Declaring those two op schemas first lets
    it import; smp's encoders never call them (no detection ops in a U-Net).
    """
    import torch

    note = ""
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.origin:
        lib = next(Path(spec.origin).parent.glob("_C*.so"), None)
        try:
            if lib is not None:
                torch.ops.load_library(str(lib))
        except OSError:
            for op in ("nms", "qnms"):
                torch.library.define(
                    f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                )
            note = (
                "torchvision's compiled ops do not load beside this torch; two unused op schemas "
                "were declared so that smp imports"
            )
    import segmentation_models_pytorch as smp

    return smp, note
