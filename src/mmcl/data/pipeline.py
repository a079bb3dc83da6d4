"""The two preparation steps (mmcl.data.prepared.prepare runs them): every source file decoded
(in a small fork pool) and run through its encoder's ``preprocess``, saved shard by shard so an
interrupted preparation resumes; then, with ``data.cache_prefix``, the encoder's block-1
``prefix`` over those inputs."""
from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from mmcl.data.cache import load_tensors, read_unreadable, save_cache_tensors, write_unreadable
from mmcl.data.errors import DataError
from mmcl.encoders.base import valid_lengths

log = logging.getLogger(__name__)

FP16_MAX = 65504.0


def mask_key(tensors: dict[str, torch.Tensor]) -> str | None:
    """The validity mask among an input dict's tensors: a 2-d bool tensor named '*mask'."""
    for k, v in tensors.items():
        if k.endswith("mask") and v.dtype == torch.bool and v.dim() == 2:
            return k
    return None


def _pad_dim1(t: torch.Tensor, n: int) -> torch.Tensor:
    if t.dim() < 2 or t.shape[1] == n:
        return t
    pad = t.new_zeros((t.shape[0], n - t.shape[1], *t.shape[2:]))  # zeros: masked, pad id 0
    return torch.cat([t, pad], dim=1)


def _cat_padded(chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-chunk dicts along rows; chunks padded to different lengths (dim 1)
    are padded to the longest first."""
    out = {}
    for k in chunks[0]:
        parts = [c[k] for c in chunks]
        n = max(p.shape[1] for p in parts) if parts[0].dim() >= 2 else None
        out[k] = torch.cat([_pad_dim1(p, n) if n is not None else p for p in parts], dim=0)
    return out


def _guarded(decoder: Callable, source):
    """decoder(source), or the error's message instead of raising it (data.on_missing=skip):
    one bad file must not stop a pool, and it is reported with its row."""
    try:
        return decoder(source)
    except DataError as e:
        return _Bad(str(e))
    except Exception as e:  # noqa: BLE001 - a decoder's unexpected error on one file (odd frame sizes, ...)
        return _Bad(f"cannot read {source}: {type(e).__name__}: {e}")


class _Bad(str):
    """A file that could not be read (its message), standing in for the raw item."""


def _decode_iter(decoder: Callable | None, sources: Sequence, workers: int) -> Iterator:
    """Raw items in source order; decoded in a small fork pool when it pays (PyAV and Pillow
    release little of the GIL, so threads would not help)."""
    if decoder is None:
        yield from sources
        return
    if workers <= 1 or len(sources) < 64 or "fork" not in multiprocessing.get_all_start_methods():
        for s in sources:
            yield decoder(s)
        return
    # fork: the children inherit the imported modules (spawn would re-import torch, ~2 s each).
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(decoder, sources, chunksize=8)


@contextlib.contextmanager
def _torch_threads(n: int):
    """Temporarily limit torch's intra-op threads. While decoding processes run, a second
    torch thread fights them for the cores: the encoders' many small ops (one STFT per clip)
    then ran 20x slower with 2 threads than with 1 on a 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _encoder_device(enc) -> torch.device:
    params = getattr(enc, "parameters", None)
    p = next(params(), None) if callable(params) else None
    return p.device if p is not None else torch.device("cpu")


SHARD_ROWS = 2048  # rows decoded between two saved parts: an interrupted preparation loses less


def prepare_inputs(enc, decoder, sources: Sequence, mod: str, chunk: int, workers: int,
                   show: bool, skip_bad: bool = False, parts: Path | None = None,
                   shard_rows: int | None = None) -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    """-> (the encoder's inputs for every source row, {row: message} of unreadable files).
    With skip_bad, an unreadable file's row holds a copy of a readable item (never used: its
    samples are left out of every split) and preparation goes on; else the DataError stops it.
    With ``parts`` (a folder), every ``shard_rows`` rows are saved there as they are done, and
    parts already there are loaded instead of decoded again (resume after an interruption)."""
    from tqdm import tqdm
    shard_rows = max(shard_rows or SHARD_ROWS, chunk)
    outs, bad = [], {}
    state = {"fallback": None}  # a readable raw item, stands in for unreadable ones
    pooled = decoder is not None and workers > 1
    threads = (os.cpu_count() or 1) - workers if pooled else torch.get_num_threads()
    if skip_bad and decoder is not None:
        decoder = functools.partial(_guarded, decoder)
    with tqdm(total=len(sources), desc=f"decode {mod}", unit="item", disable=not show) as bar, \
            _torch_threads(threads):
        for first in range(0, len(sources), shard_rows):
            shard = sources[first:first + shard_rows]
            part = parts / f"{mod}-{first:09d}.safetensors" if parts is not None else None
            part_bad = parts / f"{mod}-{first:09d}.unreadable.json" if parts is not None else None
            if part is not None and part.exists():
                done = load_tensors(part)
                if next(iter(done.values())).shape[0] == len(shard):
                    outs.append(done)
                    bad.update(read_unreadable(part_bad))
                    bar.update(len(shard))
                    continue
                log.warning("%s holds %d rows, not %d: decoding them again", part,
                            next(iter(done.values())).shape[0], len(shard))
            # resumed after saved parts and this shard has no readable item: take an earlier one
            state["earlier"] = functools.partial(_first_readable, decoder, sources[:first])
            out, shard_bad = _decode_shard(enc, decoder, shard, first, mod, chunk, workers, bar, state)
            if part is not None:
                parts.mkdir(parents=True, exist_ok=True)
                write_unreadable(part_bad, shard_bad)  # before the part: a part on disk always has its list
                save_cache_tensors(part, out)
                out = load_tensors(part)  # memory-mapped: decoded shards do not pile up in RAM
            outs.append(out)
            bad.update(shard_bad)
    return _cat_padded(outs), bad


def _first_readable(decoder, sources: Sequence):
    for src in sources:
        raw = decoder(src) if decoder is not None else src
        if not isinstance(raw, _Bad):
            return raw
    return None


def _decode_shard(enc, decoder, sources: Sequence, first: int, mod: str, chunk: int, workers: int,
                  bar, state: dict) -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    outs, raws, bad = [], [], {}

    def flush():
        outs.append(enc.preprocess([state["fallback"] if isinstance(r, _Bad) else r for r in raws]))
        bar.update(len(raws))
        raws.clear()

    for row, raw in enumerate(_decode_iter(decoder, sources, workers), first):
        if isinstance(raw, _Bad):
            bad[row] = str(raw)
        elif state["fallback"] is None:
            state["fallback"] = raw
        raws.append(raw)
        if len(raws) >= chunk and state["fallback"] is not None:
            flush()
    if raws and state["fallback"] is None and "earlier" in state:
        state["fallback"] = state["earlier"]()
    if raws and state["fallback"] is None:
        raise DataError(f"no {mod} file could be read (rows {first}-{first + len(sources) - 1}, "
                        f"{len(bad)} tried); the first: {next(iter(bad.values()))}")
    if raws:
        flush()
    return _cat_padded(outs), bad


@torch.no_grad()
def prepare_prefix(enc, inputs: dict[str, torch.Tensor], mod: str, chunk: int,
                   show: bool) -> dict[str, torch.Tensor]:
    """The encoder's block-1 prefix of every row of ``inputs``, encoded in chunks of rows of
    similar length: {"tokens": fp16 (R, N, D) (fp32 when a value is beyond fp16's range),
    "mask": bool (R, N) when the encoder gives one or the chunks differ in length}."""
    from tqdm import tqdm
    keys = list(getattr(enc, "input_keys", ()) or inputs.keys())
    rows = next(iter(inputs.values())).shape[0]
    mkey = mask_key(inputs)
    lengths = valid_lengths(inputs[mkey]) if mkey else None
    # Rows sorted by length share a chunk with rows of similar length: little padding to run.
    order = torch.argsort(lengths, stable=True) if lengths is not None else torch.arange(rows)
    device = _encoder_device(enc)
    parts, peak = [], 0.0
    for s in tqdm(range(0, rows, chunk), desc=f"prefix {mod}", unit="chunk", disable=not show):
        idx = order[s:s + chunk]
        n = max(int(lengths[idx].max()), 1) if lengths is not None else None
        batch = {k: (inputs[k][:, :n] if n is not None and inputs[k].dim() >= 2
                     and inputs[k].shape[1] == inputs[mkey].shape[1] else inputs[k])
                 .index_select(0, idx).to(device) for k in keys}
        tokens, mask = enc.prefix(batch)
        tokens = tokens.float()
        top = float(tokens.abs().max()) if tokens.numel() else 0.0
        peak = max(peak, top)
        # fp16 right away when the chunk fits: the chunks then need half the memory
        parts.append((idx, (tokens.half() if top < FP16_MAX else tokens).cpu(),
                      None if mask is None else mask.bool().cpu()))
    n_max = max(t.shape[1] for _, t, _ in parts)
    dim = parts[0][1].shape[2]
    need_mask = any(m is not None for _, _, m in parts) or any(t.shape[1] != n_max for _, t, _ in parts)
    # fp16 halves memory and disk; keep fp32 if a model's activations would overflow it.
    dtype = torch.float16 if peak < FP16_MAX else torch.float32
    if dtype == torch.float32:
        log.warning("prefix of %s reaches %.3g, beyond fp16: cached in fp32", mod, peak)
    tokens_all = torch.zeros(rows, n_max, dim, dtype=dtype)
    mask_all = torch.zeros(rows, n_max, dtype=torch.bool) if need_mask else None
    for idx, t, m in parts:
        tokens_all[idx, : t.shape[1]] = t.to(dtype)
        if mask_all is not None:
            mask_all[idx, : t.shape[1]] = True if m is None else m
    out = {"tokens": tokens_all}
    if mask_all is not None:
        out["mask"] = mask_all
    return out
