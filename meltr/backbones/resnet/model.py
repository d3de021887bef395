"""CIFAR ResNets (He et al. 2016, section 4.2): a 3x3 stem, three stages of basic blocks with
16 / 32 / 64 channels (times ``width``), option-A shortcuts, global average pooling; a
classification head and a 4-way rotation head on the pooled features."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

MODES = ("classify", "rotation", "features")


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a residual; a block that halves the resolution or
    changes the width uses option A: the input subsampled by 2 and zero-padded in channels."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.stride, self.extra_channels = stride, channels_out - channels_in

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """``CifarResNet(num_classes, blocks_per_stage=5)`` is ResNet32 (6n + 2 layers, n = 5).

    ``forward(mode=..., image=[B, 3, H, W])``: ``"classify"`` -> ``{"logits": [B, num_classes]}``,
    ``"rotation"`` -> ``{"logits": [B, 4]}`` (which of 0/90/180/270 degrees), ``"features"`` ->
    ``{"features": [B, 64 * width]}``. The three stages are the FSDP units; ``num_classes`` is
    kept as an attribute (the Classification task checks its ``topk`` against it).
    """

    def __init__(self, num_classes: int = 100, blocks_per_stage: int = 5, width: int = 1) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("blocks_per_stage", blocks_per_stage),
            ("width", width),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.num_classes = num_classes
        channels = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU()
        )
        stages, previous = [], channels[0]
        for index, width_out in enumerate(channels):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(previous, width_out, stride))
                previous = width_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(channels[-1], num_classes)
        self.rotation = nn.Linear(channels[-1], 4)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions (fan out), unit BatchNorms, PyTorch's default heads."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def fsdp_units(self) -> list[nn.Module]:
        """The three stages."""
        return list(self.stages)

    def forward(self, *, mode: str, image: Tensor) -> dict[str, Tensor]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        x = self.stem(image)
        for stage in self.stages:
            x = stage(x)
        features = x.mean(dim=(2, 3))
        if mode == "features":
            return {"features": features}
        head = self.classifier if mode == "classify" else self.rotation
        return {"logits": head(features)}
