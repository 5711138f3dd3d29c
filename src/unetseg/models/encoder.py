"""The contracting path every architecture shares (as segmentation_models_pytorch splits encoder and
decoder): one conv block per level, pooled between levels by the level's stride."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from unetseg.models.blocks import BlockFactory
from unetseg.models.layers import LayerConfig, Steps, pool


class Encoder(nn.Module):
    """Levels ``0..depth``: ``block(level input) -> features``, the input of level ``i > 0`` pooled by
    ``strides[i - 1]``. ``forward`` returns every level's features, finest first (the last is the
    bottleneck). Iterating yields the blocks; their state-dict keys are ``0``, ``1``, ... as before.

    Args:
        cfg: shared layer choices.
        in_channels: input image channels.
        widths: channels of levels ``0..depth``.
        block: the conv block class.
        strides: the down-steps (``depth`` of them; an int or one per axis each).
        kernels: the conv kernel of each level (``depth + 1``; an int or one per axis each).
    """

    def __init__(
        self,
        cfg: LayerConfig,
        in_channels: int,
        widths: Sequence[int],
        block: BlockFactory,
        strides: Sequence[Steps],
        kernels: Sequence[Steps],
    ) -> None:
        super().__init__()
        ins = [in_channels, *widths[:-1]]
        for i, (cin, cout) in enumerate(zip(ins, widths, strict=True)):
            self.add_module(str(i), block(cfg, cin, cout, first=i == 0, kernel=kernels[i]))
        self.blocks = [getattr(self, str(i)) for i in range(len(widths))]
        # pools hold no state; kept after the blocks so the blocks' keys and init order stay the same
        self.pools = nn.ModuleList(pool(cfg.dims, s) for s in strides)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> nn.Module:
        return self.blocks[i]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pools[i - 1](x))
            feats.append(x)
        return feats
