"""Inertial-sensor encoder (accelerometer, gyroscope): a small transformer over sensor windows.

No public pre-trained IMU model exists, so ``source=random`` (the default) builds a seeded
random model that stays frozen like every other encoder: the adapters and heads learn on top of
random features (see docs/datasets.md). ``encoders.<m>.imu.fit=first_task`` instead trains it on
task 1 and then freezes it (mmcl.encoders.fit). ``source`` may instead name a file
(``torch.save`` of this module's ``state_dict()``, loaded with ``weights_only=True``), e.g. one
trained on another data set.

Input: a recording resampled to ``encoders.<m>.imu.length`` samples of C axes (the data set's
decoder scales and filters it). Tokens: non-overlapping windows of ``encoders.<m>.imu.window``
samples, each window flattened and projected (``width``), plus sinusoidal positions; then
``layers`` pre-norm transformer layers (heads = width / 32), split into ``model.blocks`` groups.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmcl.encoders.base import BlockEncoder, split_layers
from mmcl.encoders.weights import file_stamp, load_error
from mmcl.registry import register_encoder
from mmcl.settings import setting

AXES = 3


def sinusoids(n: int, dim: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


def resample(x: np.ndarray, length: int) -> np.ndarray:
    """(T, C) -> (length, C) by linear interpolation over the recording's span."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] == length:
        return x
    if x.shape[0] == 1:
        return np.repeat(x, length, axis=0)
    src = np.linspace(0.0, 1.0, x.shape[0])
    dst = np.linspace(0.0, 1.0, length)
    return np.stack([np.interp(dst, src, x[:, c]) for c in range(x.shape[1])], axis=1).astype(np.float32)


@dataclass
class IMUSettings:
    fit: str = setting("'none' (frozen at its weights: seeded random for source=random) or 'first_task' (trained "
                       "with a linear head on task 1's training data before task 1, then frozen; the weights are "
                       "saved in the run folder as fitted_<modality>.safetensors) [C]", "none",
                       choices=("none", "first_task"))
    fit_epochs: int = setting("epochs of the 'first_task' fit (AdamW, train.lr, train.batch_size)", 10, minimum=1)
    length: int = setting("recordings are linearly resampled to this many samples [C]", 192, minimum=1)
    window: int = setting("samples per token (UESTC-MMEA-CL's official window: 24); must divide length", 24,
                          minimum=1)


@register_encoder("imu", settings=IMUSettings, former_keys={"fit": "fit", "fit_epochs": "fit_epochs",
                                                                "data.sensor_length": "length",
                                                                "data.sensor_window": "window"})
class IMUEncoder(BlockEncoder):
    """Small transformer over windows of a 3-axis sensor (frozen random, a weight file, or fitted on task 1)."""

    modality = "sensor"
    input_keys = ("signal",)

    def __init__(self, enc_cfg, num_blocks: int, data_cfg):
        super().__init__(num_blocks)
        self.source = enc_cfg.source
        own = enc_cfg.imu  # this encoder's settings (encoders.<m>.imu.*)
        self.fit_on_first_task, self.fit_epochs = own.fit == "first_task", int(own.fit_epochs)
        self.length, self.window = int(own.length), int(own.window)
        if self.length % self.window:
            raise ValueError(f"sensor encoder imu: length={self.length} must be a multiple of "
                             f"window={self.window} (encoders.<m>.imu.*)")
        width, layers = int(enc_cfg.width), int(enc_cfg.layers)
        heads = max(1, width // 32)
        if width % heads:
            raise ValueError(f"sensor encoder imu: width {width} must be a multiple of {heads} heads (32 each)")
        with torch.random.fork_rng(devices=[]):  # seeded: same config, same weights
            torch.manual_seed(0)
            self.embed = nn.Linear(self.window * AXES, width)
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True,
                                           norm_first=True) for _ in range(layers))
            self.norm = nn.LayerNorm(width)
        self.register_buffer("pos", sinusoids(self.length // self.window, width), persistent=False)
        self._stamp = f"random:w{width}:l{layers}"
        if self.source != "random":
            what = f"sensor encoder imu (source='{self.source}')"
            path = Path(self.source).expanduser()
            if not path.is_file():
                raise ValueError(f"{what}: weight file {path} does not exist (pass source='random' or a "
                                 "state_dict saved with torch.save)")
            try:
                self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
            except Exception as e:  # noqa: BLE001 - unpickling and shape errors vary
                raise ValueError(f"{what}: cannot load {path} ({load_error(e)}); it must be the state_dict of an "
                                 f"imu encoder with width={width}, layers={layers}, "
                                 f"window={self.window}") from None
            self._stamp = file_stamp(path)
        self.groups = split_layers(layers, num_blocks, f"imu ({layers} layers)")
        self.dims = [width] * num_blocks

    def _run(self, b: int, h: torch.Tensor) -> torch.Tensor:
        for i in self.groups[b]:
            h = self.layers[i](h)
        if b == self.num_blocks - 1:
            h = self.norm(h)
        return h

    def prefix(self, inputs):
        x = inputs["signal"].to(self.embed.weight.dtype)  # (B, length, 3)
        n = x.shape[0]
        tokens = self.embed(x.reshape(n, -1, self.window * AXES)) + self.pos.to(x.dtype)
        return self._run(0, tokens), None

    def forward_block(self, b, tokens, mask):
        return self._run(b, tokens), mask

    def identity(self) -> str:
        return (f"imu|v1|{self._stamp}|blocks={self.num_blocks}|layers0={self.groups[0]}|"
                f"length={self.length}|window={self.window}")

    def preprocess(self, raws: list) -> dict[str, torch.Tensor]:
        """Recordings (T, 3) float -> {'signal': float32 (B, length, 3)}."""
        out = []
        for r in raws:
            r = np.asarray(r, dtype=np.float32)
            if r.ndim != 2 or r.shape[1] != AXES:
                raise ValueError(f"sensor encoder imu: a recording has shape {r.shape}, expected (samples, {AXES})")
            out.append(resample(r, self.length))
        return {"signal": torch.from_numpy(np.stack(out))}
