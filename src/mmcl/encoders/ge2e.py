"""GE2E speaker encoder (resemblyzer's pre-trained weights), block-wise.

resemblyzer's network is LSTM(40 -> 256, 3 layers) -> Linear(256, 256) -> ReLU on the last
hidden state. Here each LSTM layer is its own single-layer ``nn.LSTM`` so the layers can be
split into blocks, and the Linear + ReLU is applied to every frame after the last layer, so the
tokens are per-frame states (B, T, 256). The LSTMs are unidirectional: right padding never
changes the outputs on real frames, so the mask passes through unchanged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmcl.encoders.audio import N_MELS, SAMPLE_RATE, speech_features
from mmcl.encoders.base import BlockEncoder, split_layers
from mmcl.encoders.weights import file_stamp, load_error, package_file
from mmcl.registry import register_encoder

PIP_SPEC = "resemblyzer==0.1.4"
WEIGHTS = ("resemblyzer", "pretrained.pt")
HIDDEN, NUM_LAYERS = 256, 3

__all__ = ["GE2EEncoder", "speech_features"]


def _resemblyzer_to_layers(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """resemblyzer keys (``lstm.weight_ih_l1``, ``linear.weight``) -> ours (``lstms.1.weight_ih_l0``)."""
    out = {}
    for i in range(num_layers):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            out[f"lstms.{i}.{name}_l0"] = sd[f"lstm.{name}_l{i}"]
    out["linear.weight"], out["linear.bias"] = sd["linear.weight"], sd["linear.bias"]
    return out


@register_encoder("ge2e")
class GE2EEncoder(BlockEncoder):
    """GE2E speaker encoder (resemblyzer, 3-layer LSTM, 256-d); tokens = 10 ms frames (B, T, 256)."""

    modality = "audio"
    input_keys = ("speech", "speech_mask")

    def __init__(self, enc_cfg, num_blocks: int, data_cfg):
        super().__init__(num_blocks)
        self.source = enc_cfg.source
        self.sample_rate = int(data_cfg.sample_rate)
        self.max_seconds = float(data_cfg.max_speech_seconds)
        what = f"speech encoder ge2e (source='{self.source}')"
        if self.source == "random":
            hidden, layers = int(enc_cfg.width), max(3, int(enc_cfg.layers))
            with torch.random.fork_rng(devices=[]):  # seeded: same config, same weights
                torch.manual_seed(0)
                self._build(hidden, layers)
            self._stamp = f"random:h{hidden}:l{layers}"
        else:
            if self.sample_rate != SAMPLE_RATE:
                raise ValueError(f"{what}: GE2E was trained on {SAMPLE_RATE} Hz audio, but "
                                 f"data.sample_rate={self.sample_rate}")
            path = package_file(*WEIGHTS, PIP_SPEC, what) if self.source == "package" else Path(self.source)
            if not path.is_file():
                raise ValueError(f"{what}: weight file {path} does not exist (pass source='package', "
                                 "'random' or the path of a resemblyzer checkpoint)")
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - unpickling errors vary
                raise ValueError(f"{what}: cannot read {path} as a PyTorch checkpoint ({load_error(e)}). Pass "
                                 "source='package', 'random' or the path of a resemblyzer checkpoint.") from None
            sd = ckpt.get("model_state", ckpt) if isinstance(ckpt, dict) else ckpt
            self._build(HIDDEN, NUM_LAYERS)
            try:
                self.load_state_dict(_resemblyzer_to_layers(sd, NUM_LAYERS), strict=True)
            except (KeyError, RuntimeError, TypeError, AttributeError) as e:
                raise ValueError(f"{what}: {path} is not a resemblyzer GE2E checkpoint "
                                 f"(lstm.*_l0..l2, linear.*): {e}") from None
            self.weights_path = path
            self._stamp = file_stamp(path)
        self.groups = split_layers(len(self.lstms), num_blocks, f"ge2e ({len(self.lstms)} LSTM layers)")
        self.dims = [self.hidden] * num_blocks

    def _build(self, hidden: int, layers: int) -> None:
        self.hidden = hidden
        self.lstms = nn.ModuleList(
            nn.LSTM(N_MELS if i == 0 else hidden, hidden, 1, batch_first=True) for i in range(layers))
        self.linear = nn.Linear(hidden, hidden)

    # ------------------------------------------------------------------------------------------
    def _run(self, b: int, x: torch.Tensor) -> torch.Tensor:
        for i in self.groups[b]:
            x, _ = self.lstms[i](x)
        if b == self.num_blocks - 1:  # the embedding projection, per frame
            x = torch.relu(self.linear(x))
        return x

    def prefix(self, inputs):
        return self._run(0, inputs["speech"].to(self.linear.weight.dtype)), inputs.get("speech_mask")

    def forward_block(self, b, tokens, mask):
        return self._run(b, tokens), mask

    def identity(self) -> str:
        return (f"ge2e|v1|{self._stamp}|blocks={self.num_blocks}|layers0={self.groups[0]}|"
                f"sr={self.sample_rate}|max_s={self.max_seconds}")

    # ------------------------------------------------------------------------------------------
    def preprocess(self, raws: list) -> dict[str, torch.Tensor]:
        """Mono float32 waveforms at data.sample_rate -> {'speech': (B, T, 40), 'speech_mask': (B, T)}."""
        n_max = int(round(self.max_seconds * self.sample_rate))
        feats = [speech_features(np.asarray(w, dtype=np.float32)[:n_max], self.sample_rate) for w in raws]
        t_max = max(f.shape[0] for f in feats)
        speech = torch.zeros(len(feats), t_max, N_MELS)
        mask = torch.zeros(len(feats), t_max, dtype=torch.bool)
        for i, f in enumerate(feats):
            speech[i, : len(f)] = torch.from_numpy(f)
            mask[i, : len(f)] = True
        return {"speech": speech, "speech_mask": mask}
