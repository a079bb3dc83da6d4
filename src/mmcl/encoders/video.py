"""Video encoders: F frames per clip (sampled at preparation, ``data.video_frames``), block-wise.

``vit_video``: every frame through the same frozen ViT, separately (the frames never attend to
each other inside the encoder); a clip's tokens stay together, ``(batch, F * (1 + patches), D)``,
so the cross-modality adapters see the whole clip and route it as one sample.
``videomae``: VideoMAE (tubelets of 2 frames x 16 x 16 pixels, joint space-time attention), the
video encoder AV-CIL used; its position table fixes the frame count (16 for the base models).

Both load from a Hugging Face id or a ``save_pretrained`` folder (``hf_text.load_source``), or
``source=random`` for tests. Prompts (l2p, dualprompt, codaprompt) are added to every token
(``prompt_mode = "add"``): prepended tokens would break the per-frame reshaping.
"""
from __future__ import annotations

import torch

from mmcl.encoders.hf_text import load_source
from mmcl.encoders.hf_vision import HFTransformerBlocks, ViTEncoder, resize_rgb
from mmcl.registry import register_encoder


def resize_clips(raws: list, size: int) -> torch.Tensor:
    """Clips (F, H, W, 3) uint8 -> uint8 (B, F, 3, size, size)."""
    return torch.stack([resize_rgb(list(clip), size) for clip in raws])


def check_frames(raws: list, frames: int, what: str) -> None:
    for clip in raws:
        if len(clip) != frames:
            raise ValueError(f"{what}: a clip has {len(clip)} frames, expected data.video_frames={frames}")


@register_encoder("vit_video")
class ViTVideoEncoder(ViTEncoder):
    """ViT on each of a clip's F frames (tokens: F x ([CLS] + patches)); e.g. google/vit-base-patch16-224-in21k."""

    modality = "video"
    input_keys = ("frames",)
    prompt_mode = "add"

    def __init__(self, enc_cfg, num_blocks: int, data_cfg):
        super().__init__(enc_cfg, num_blocks, data_cfg)
        self.frames = self.pieces = int(data_cfg.video_frames)  # each frame alone through the ViT

    def prefix(self, inputs):
        x = inputs["frames"]  # (B, F, 3, S, S)
        return self._joined(self._run(0, self.model.embeddings(self._normalise(x.flatten(0, 1)))), x.shape[0]), None

    def identity(self) -> str:
        return super().identity().replace("vit|", "vit_video|", 1) + f"|frames={self.frames}"

    def preprocess(self, raws: list) -> dict[str, torch.Tensor]:
        """Clips (F, H, W, 3) uint8 RGB -> {'frames': uint8 (B, F, 3, S, S)} (normalised in prefix)."""
        check_frames(raws, self.frames, "video encoder vit_video")
        return {"frames": resize_clips(raws, self.image_size)}


@register_encoder("videomae")
class VideoMAEEncoder(HFTransformerBlocks):
    """VideoMAE (space-time tubelets); e.g. MCG-NJU/videomae-base, 16 frames of 224 px."""

    modality = "video"
    input_keys = ("frames",)
    prompt_mode = "add"

    def __init__(self, enc_cfg, num_blocks: int, data_cfg):
        super().__init__(num_blocks)
        self.source = enc_cfg.source
        self.frames = int(data_cfg.video_frames)
        if self.source == "random":
            from transformers import VideoMAEConfig, VideoMAEModel
            w, size = int(enc_cfg.width), int(data_cfg.image_size)
            config = VideoMAEConfig(hidden_size=w, num_hidden_layers=int(enc_cfg.layers),
                                    num_attention_heads=max(1, w // 64), intermediate_size=4 * w,
                                    image_size=size, patch_size=16 if size >= 64 else 8,
                                    num_frames=self.frames, tubelet_size=2 if self.frames % 2 == 0 else 1,
                                    use_mean_pooling=False)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = VideoMAEModel(config)
            self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
            self._stamp = f"random:w{w}:l{enc_cfg.layers}"
        else:
            model, proc, self._stamp = load_source(
                self.source, f"video encoder videomae (source='{self.source}')", "AutoImageProcessor",
                "encoders.video.source")
            self.mean = tuple(getattr(proc, "image_mean", None) or (0.485, 0.456, 0.406))
            self.std = tuple(getattr(proc, "image_std", None) or (0.229, 0.224, 0.225))
        want = int(model.config.num_frames)
        if want != self.frames:
            raise ValueError(f"video encoder videomae (source='{self.source}') takes {want} frames per "
                             f"clip: set data.video_frames={want} (now {self.frames})")
        self.image_size = int(model.config.image_size)
        self._setup(model, num_blocks, "videomae")

    def prefix(self, inputs):
        return self._run(0, self.model.embeddings(self._normalise(inputs["frames"]), None)), None

    def identity(self) -> str:
        return (f"videomae|v1|{self._stamp}|blocks={self.num_blocks}|layers0={self.groups[0]}"
                f"|size={self.image_size}|frames={self.frames}")

    def preprocess(self, raws: list) -> dict[str, torch.Tensor]:
        check_frames(raws, self.frames, "video encoder videomae")
        return {"frames": resize_clips(raws, self.image_size)}
