"""ViT (images / video frames) and AST (audio) encoders from transformers, block-wise.

The paper's setting: a ViT on frames and the Audio Spectrogram Transformer on 128-bin log-mel
filter banks (transformers' own ``ASTFeatureExtractor``, no torchaudio). Both load from a
Hugging Face id (local cache only unless MMCL_DOWNLOAD=1) or a folder written by
``save_pretrained``, never with ``trust_remote_code``; ``source=random`` builds a random model
of ``width`` x ``layers`` (heads = width / 64, MLP 4 x width) for tests and cost benchmarks.

Block 1 = patch embedding + the first group of layers; the last block ends with the model's
final LayerNorm, so the block-wise pass equals ``model(...).last_hidden_state`` (tests check it).

Audio-leakage note (AVE): AVE's clips come from AudioSet, so an AST fine-tuned on AudioSet
(e.g. ``MIT/ast-finetuned-audioset-10-10-0.4593``) has seen their labels. Prefer a checkpoint
that was not fine-tuned on AudioSet for AVE (e.g. ``MIT/ast-finetuned-speech-commands-v2``).
"""
from __future__ import annotations

import numpy as np
import torch

from mmcl.encoders.base import BlockEncoder, split_layers
from mmcl.encoders.hf_text import find_layers, load_source
from mmcl.registry import register_encoder


class HFTransformerBlocks(BlockEncoder):
    """Shared block logic: ``model.embeddings`` -> groups of ``layers`` -> ``model.layernorm``."""

    def _setup(self, model, num_blocks: int, what: str):
        self.model = model.eval()
        self.layers = find_layers(model)
        self.groups = split_layers(len(self.layers), num_blocks, f"{what} ({len(self.layers)} layers)")
        self.dims = [int(model.config.hidden_size)] * num_blocks
        self.final_norm = getattr(model, "layernorm", None)

    def _run(self, b: int, h: torch.Tensor) -> torch.Tensor:
        for i in self.groups[b]:
            out = self.layers[i](h)
            h = out[0] if isinstance(out, tuple) else out
        if b == self.num_blocks - 1 and self.final_norm is not None:
            h = self.final_norm(h)
        return h

    # A sample's inputs may run through the model as separate pieces (video frames, audio
    # chunks), each alone; its tokens stay together as (batch, pieces * tokens, D).
    pieces = 1

    def _joined(self, h: torch.Tensor, n: int) -> torch.Tensor:
        """(n * pieces, N, D) -> (n, pieces * N, D)."""
        return h.reshape(n, -1, h.shape[-1])

    def forward_block(self, b, tokens, mask):
        if self.pieces == 1:
            return self._run(b, tokens), mask
        n, length, dim = tokens.shape
        return self._joined(self._run(b, tokens.reshape(n * self.pieces, length // self.pieces, dim)), n), mask

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (..., 3, S, S) -> the processor's normalised floats (floats pass through)."""
        if x.dtype != torch.uint8:
            return x
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return (x.float() / 255.0 - mean) / std


@register_encoder("vit")
class ViTEncoder(HFTransformerBlocks):
    """Vision Transformer on images (tokens: [CLS] + patches); e.g. google/vit-base-patch16-224-in21k."""

    modality = "image"
    input_keys = ("pixels",)

    def __init__(self, enc_cfg, num_blocks: int, data_cfg):
        super().__init__(num_blocks)
        self.source = enc_cfg.source
        self.image_size = int(data_cfg.image_size)
        if self.source == "random":
            from transformers import ViTConfig, ViTModel
            w = int(enc_cfg.width)
            config = ViTConfig(hidden_size=w, num_hidden_layers=int(enc_cfg.layers),
                               num_attention_heads=max(1, w // 64), intermediate_size=4 * w,
                               image_size=self.image_size, patch_size=16 if self.image_size >= 64 else 8)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = ViTModel(config, add_pooling_layer=False)
            self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
            self._stamp = f"random:w{w}:l{enc_cfg.layers}"
        else:
            model, proc, self._stamp = load_source(
                self.source, f"{self.modality} encoder {self.registered_name} (source='{self.source}')",
                "AutoImageProcessor", f"encoders.{self.modality}.source")
            self.mean = tuple(getattr(proc, "image_mean", None) or (0.5, 0.5, 0.5))
            self.std = tuple(getattr(proc, "image_std", None) or (0.5, 0.5, 0.5))
            self.image_size = int(model.config.image_size)  # position embeddings fix the size
        self._setup(model, num_blocks, "vit")

    def prefix(self, inputs):
        return self._run(0, self.model.embeddings(self._normalise(inputs["pixels"]))), None

    def identity(self) -> str:
        return f"vit|v1|{self._stamp}|blocks={self.num_blocks}|layers0={self.groups[0]}|size={self.image_size}"

    def preprocess(self, raws: list) -> dict[str, torch.Tensor]:
        """HxWx3 uint8 RGB arrays -> {'pixels': uint8 (B, 3, S, S)} (normalised in prefix)."""
        return {"pixels": resize_rgb(raws, self.image_size)}


def resize_rgb(images, size: int) -> torch.Tensor:
    """HxWx3 uint8 arrays (any H, W) -> uint8 (n, 3, size, size), bilinear."""
    from PIL import Image
    out = [np.asarray(Image.fromarray(np.asarray(a)).convert("RGB").resize((size, size), Image.BILINEAR))
           for a in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@register_encoder("ast")
class ASTEncoder(HFTransformerBlocks):
    """Audio Spectrogram Transformer on 128-bin log-mel filter banks; e.g. MIT/ast-finetuned-speech-commands-v2."""

    modality = "audio"
    input_keys = ("fbank",)

    def __init__(self, enc_cfg, num_blocks: int, data_cfg):
        super().__init__(num_blocks)
        self.source = enc_cfg.source
        self.sample_rate = int(data_cfg.sample_rate)
        if self.source == "random":
            from transformers import ASTConfig, ASTFeatureExtractor, ASTModel
            w = int(enc_cfg.width)
            frames = max(16, int(round(float(data_cfg.max_speech_seconds) * 100)))
            config = ASTConfig(hidden_size=w, num_hidden_layers=int(enc_cfg.layers),
                               num_attention_heads=max(1, w // 64), intermediate_size=4 * w,
                               max_length=frames, num_mel_bins=128)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = ASTModel(config)
            self.extractor = ASTFeatureExtractor(sampling_rate=self.sample_rate, max_length=frames)
            self._stamp = f"random:w{w}:l{enc_cfg.layers}:f{frames}"
        else:
            model, self.extractor, self._stamp = load_source(
                self.source, f"audio encoder ast (source='{self.source}')", "AutoFeatureExtractor",
                "encoders.audio.source (or encoders.speech.source)")
        self._setup(model, num_blocks, "ast")
        # The position table fixes the frames per pass (model.config.max_length; 100 frames a
        # second): longer audio (data.max_speech_seconds) runs as consecutive chunks of that many
        # frames, each through the model alone, their tokens kept together (as vit_video's frames).
        self.chunk = int(model.config.max_length)
        wanted = int(round(float(data_cfg.max_speech_seconds) * 100))
        self.chunks = self.pieces = max(1, -(-wanted // self.chunk))
        if self.chunks > 1:
            self.prompt_mode = "add"  # prepended prompt tokens would break the per-chunk reshaping

    def prefix(self, inputs):
        x = inputs["fbank"].float()  # (B, chunks * chunk, 128)
        n = x.shape[0]
        return self._joined(self._run(0, self.model.embeddings(x.reshape(n * self.chunks, self.chunk, x.shape[-1]))),
                            n), None

    def identity(self) -> str:
        chunks = f"|chunks={self.chunks}" if self.chunks > 1 else ""
        return f"ast|v1|{self._stamp}|blocks={self.num_blocks}|layers0={self.groups[0]}|sr={self.sample_rate}{chunks}"

    def preprocess(self, raws: list) -> dict[str, torch.Tensor]:
        """Mono float32 waveforms at data.sample_rate -> {'fbank': (B, chunks * max_length, 128)}
        (the extractor pads / cuts to that many frames and normalises)."""
        self.extractor.max_length = self.chunks * self.chunk
        feats = self.extractor([np.asarray(w, dtype=np.float32) for w in raws],
                               sampling_rate=self.sample_rate, return_tensors="np")
        return {"fbank": torch.from_numpy(np.asarray(feats["input_values"], dtype=np.float32))}
