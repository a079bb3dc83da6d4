"""Frozen pre-trained encoders, one per modality, all behind the block-wise BlockEncoder interface.

Importing this package registers the encoder kinds (mobilenetv2, ge2e, hf_text, vit, ast, vit_video, videomae, imu).
"""
from __future__ import annotations

import difflib
import zlib

from mmcl.encoders import ge2e, hf_text, hf_vision, imu, mobilenet, video  # noqa: F401 - registers the encoders
from mmcl.encoders.audio import speech_features
from mmcl.encoders.base import BlockEncoder, masked_mean, split_layers
from mmcl.registry import REGISTRIES
from mmcl.settings import MODALITY_TYPES

__all__ = ["BlockEncoder", "build_encoder", "masked_mean", "speech_features", "split_layers"]


def build_encoder(modality: str, cfg) -> BlockEncoder:
    """The frozen encoder for ``modality`` from a full mmcl Config (cfg.encoders.<modality>,
    cfg.model.blocks, cfg.data). Raises ValueError naming modality, kind and source on errors."""
    enc_cfg = getattr(cfg.encoders, modality, None)
    if enc_cfg is None or modality not in MODALITY_TYPES:
        raise ValueError(f"no encoder configured for modality '{modality}' (known: {', '.join(MODALITY_TYPES)})")
    table = REGISTRIES["encoder"]
    cls = table.get(enc_cfg.kind)
    where = f"encoders.{modality} (kind='{enc_cfg.kind}', source='{enc_cfg.source}')"
    if cls is None:
        near = difflib.get_close_matches(enc_cfg.kind, list(table), n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise ValueError(f"{where}: unknown encoder kind.{hint} Known: {', '.join(sorted(table))}")
    if cls.modality != MODALITY_TYPES[modality]:
        raise ValueError(f"{where}: encoder '{enc_cfg.kind}' takes {cls.modality} input, and modality "
                         f"'{modality}' is {MODALITY_TYPES[modality]}")
    try:
        enc = cls(enc_cfg, int(cfg.model.blocks), cfg.data)
    except ValueError as e:
        msg = str(e)  # the encoders' own messages already start with '<modality> encoder <kind>'
        raise ValueError(msg if msg.startswith(f"{modality} encoder") else f"{where}: {msg}") from None
    if getattr(enc_cfg, "random_weights", False):
        before = enc.identity()
        # One fixed seed per slot: every run (and seed) of an experiment gets the same weak encoder.
        enc.randomize_weights(zlib.crc32(f"random-weights:{modality}".encode()))
        if enc.identity() == before:
            raise ValueError(f"{where}: encoders.{modality}.random_weights needs the encoder's identity() to "
                             "include its _stamp (the prepared cache would mix it up with the pre-trained one)")
    return enc.freeze()
