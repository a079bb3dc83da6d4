"""Prepared data: decode a data set once, cache it on disk, serve batches from memory.

Encoders are frozen and inputs are not augmented, so everything up to the first adapter is a
pure function of the file on disk. ``prepare`` decodes every file once, runs each encoder's
``preprocess`` (resize / tokenize / filter bank) and, with ``data.cache_prefix``, its
``prefix`` (tokenizer + block 1), and stores the results as safetensors. Training then
gathers batches with ``index_select`` on in-memory tensors: no decoding, no data loader.

Cache folder: ``<data.cache_dir>/<dataset>/<key>/`` where key hashes the settings that change
the inputs and every used encoder's ``identity()``::

    records.json               samples (class, domain, row per modality) and their sources
    inputs_<mod>.safetensors   the encoder's preprocess output for every row
    parts/<mod>-<row>.*        while a modality is decoded: every SHARD_ROWS rows as they are
                               done (an interrupted preparation resumes from them); merged
                               into inputs_<mod> and removed at the end
    unreadable_<mod>.json      rows whose file could not be decoded (data.on_missing=skip)
    prefix_<mod>.safetensors   {"tokens": fp16 (R, N, D), "mask": bool (R, N) when masked}

Each file is written atomically (temporary name in the same folder, then ``os.replace``), so
a file that exists is complete; an interrupted preparation resumes with the missing files.

A data set (registered with ``@register_dataset``) provides: ``__init__(data_cfg)``,
``modalities``, ``classes``, ``domains``, ``settings() -> dict``, ``index() -> (records,
sources)``, ``decoder(modality) -> picklable callable or None``, ``info() -> dict`` and
``split_samples(records, fractions, seed)``. Splits are computed at load time from the seed,
never cached, so one prepared cache serves every seed.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcl.encoders.base import valid_lengths

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the layout or content of cache files changes
FP16_MAX = 65504.0
_UMASK = os.umask(0)  # read the process umask (only settable), then restore it
os.umask(_UMASK)


class DataError(ValueError):
    """A data problem the user can fix: names the file or setting and what to do."""


# -- small helpers ----------------------------------------------------------------------------
def cache_key(dataset: str, settings: dict, identities: dict[str, str]) -> str:
    blob = json.dumps({"version": FORMAT_VERSION, "dataset": dataset, "settings": settings,
                       "encoders": identities}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write_error(path: Path, e: BaseException) -> DataError:
    return DataError(f"cannot write the data cache file {path}: {e}. Free some space or make the "
                     "folder writable, or set data.cache_dir (or MMCL_CACHE) to another folder; "
                     "cache files already written are complete and are kept.")


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False)
        os.replace(tmp, path)
    except OSError as e:  # disk full, read-only, permissions: the complete files stay
        raise _write_error(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file
    tmp = _tmp_name(path)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # safetensors creates 0600; match files open() makes
        os.replace(tmp, path)
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def _write_unreadable(path: Path, bad: dict[int, str]) -> None:
    """{row: message} of the files that could not be read; no file when there are none (a
    stale list from an interrupted attempt is removed)."""
    if bad:
        _atomic_write_json(path, {str(r): msg for r, msg in sorted(bad.items())})
    else:
        path.unlink(missing_ok=True)


def _read_unreadable(path: Path) -> dict[int, str]:
    if not path.exists():
        return {}
    try:
        return {int(r): msg for r, msg in json.loads(path.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"cannot read {path}: {e}. Delete the folder {path.parent} and prepare again.") from e


def _read_records(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not {"records", "sources", "classes", "domains"} <= set(meta):
            raise ValueError("not an mmcl records file")
    except (OSError, ValueError) as e:  # json's errors are ValueErrors
        raise DataError(f"cannot read the prepared index {path}: {e}. Delete the folder {path.parent} "
                        "and prepare again.") from e
    return meta


_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BOOL": np.bool_, "U8": np.uint8,
                 "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64}


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A cache file's tensors, memory-mapped (copy-on-write): a cache larger than RAM (video
    data sets: tens of GB of prefix tokens) is paged in by the OS as batches touch its rows,
    and several runs on one machine share the pages. Falls back to reading the whole file for
    dtypes NumPy lacks (bf16)."""
    from safetensors.torch import load_file
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        if any(h["dtype"] not in _NUMPY_DTYPES for h in header.values()):
            return load_file(str(path))
        out = {}
        for name, h in header.items():
            begin, end = h["data_offsets"]
            dtype, shape = _NUMPY_DTYPES[h["dtype"]], tuple(h["shape"])
            if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
                raise ValueError(f"tensor {name}: {end - begin} bytes for shape {shape}")
            if end == begin:
                out[name] = torch.from_numpy(np.zeros(shape, dtype=dtype))
                continue
            arr = np.memmap(path, dtype=dtype, mode="c", offset=8 + n + begin, shape=shape)
            out[name] = torch.from_numpy(arr)
        return out
    except Exception as e:  # damaged header, truncated file, ...
        raise DataError(f"cannot read cached file {path}: {e}. Delete the folder {path.parent} "
                        "and prepare again.") from e


def _mask_key(tensors: dict[str, torch.Tensor]) -> str | None:
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


def _show_progress(progress: bool) -> bool:
    return bool(progress) and sys.stderr.isatty()


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


# -- the two preparation steps ----------------------------------------------------------------
SHARD_ROWS = 2048  # rows decoded between two saved parts: an interrupted preparation loses less


def _prepare_inputs(enc, decoder, sources: Sequence, mod: str, chunk: int, workers: int,
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
                done = _load_tensors(part)
                if next(iter(done.values())).shape[0] == len(shard):
                    outs.append(done)
                    bad.update(_read_unreadable(part_bad))
                    bar.update(len(shard))
                    continue
                log.warning("%s holds %d rows, not %d: decoding them again", part,
                            next(iter(done.values())).shape[0], len(shard))
            # resumed after saved parts and this shard has no readable item: take an earlier one
            state["earlier"] = functools.partial(_first_readable, decoder, sources[:first])
            out, shard_bad = _decode_shard(enc, decoder, shard, first, mod, chunk, workers, bar, state)
            if part is not None:
                parts.mkdir(parents=True, exist_ok=True)
                _write_unreadable(part_bad, shard_bad)  # before the part: a part on disk always has its list
                _atomic_save_tensors(part, out)
                out = _load_tensors(part)  # memory-mapped: decoded shards do not pile up in RAM
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
def _prepare_prefix(enc, inputs: dict[str, torch.Tensor], mod: str, chunk: int,
                    show: bool) -> dict[str, torch.Tensor]:
    from tqdm import tqdm
    keys = list(getattr(enc, "input_keys", ()) or inputs.keys())
    rows = next(iter(inputs.values())).shape[0]
    mkey = _mask_key(inputs)
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


# -- public API -------------------------------------------------------------------------------
def cache_folder(cfg, encoders: dict[str, Any]) -> Path:
    """Where ``prepare`` caches ``cfg.data`` with these encoders (does not create it)."""
    from mmcl.registry import get
    data = cfg.data
    dataset = get("dataset", data.dataset)(data)
    return _folder(data, dataset, encoders)


def _folder(data, dataset, encoders) -> Path:
    missing = [m for m in data.modalities if m not in encoders]
    if missing:
        raise DataError(f"no encoder given for modality {', '.join(missing)} (data.modalities="
                        f"{list(data.modalities)})")
    unknown = [m for m in data.modalities if m not in dataset.modalities]
    if unknown:
        raise DataError(f"data set '{data.dataset}' has no modality {', '.join(unknown)} "
                        f"(it has {', '.join(dataset.modalities)}); fix data.modalities")
    identities = {m: encoders[m].identity() for m in data.modalities}
    key = cache_key(data.dataset, dataset.settings(), identities)
    return Path(os.path.expanduser(data.cache_dir)) / data.dataset / key


def prepare(cfg, encoders: dict[str, Any], progress: bool = True, workers: int | None = None,
            chunk_size: int = 256) -> PreparedData:
    """Decode, preprocess and (with data.cache_prefix) encode the data set's block-1 prefix once;
    later calls with the same settings load the cache and decode nothing.

    encoders: {modality: BlockEncoder} for every modality in data.modalities (others ignored).
    workers: decoding processes (default: one per core, at most 8).
    """
    from mmcl.registry import get
    data = cfg.data
    ds_cls = get("dataset", data.dataset)
    dataset = ds_cls(data)
    folder = _folder(data, dataset, encoders)
    mods = list(data.modalities)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    skip_bad = getattr(data, "on_missing", "fail") == "skip"
    show = _show_progress(progress)
    timings: dict[str, float] = {}

    records_path = folder / "records.json"
    if records_path.exists():
        meta = _read_records(records_path)
    else:
        t0 = time.perf_counter()
        records, sources = dataset.index()
        meta = {"version": FORMAT_VERSION, "dataset": data.dataset, "settings": dataset.settings(),
                "encoders": {m: encoders[m].identity() for m in mods},
                "classes": list(dataset.classes), "domains": list(dataset.domains),
                "info": dataset.info(), "records": records, "sources": sources}
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the data cache folder {folder}: {e}. Set data.cache_dir "
                            "(or MMCL_CACHE) to a writable folder.") from e
        _atomic_write_json(records_path, meta)
        timings["index_s"] = time.perf_counter() - t0

    for mod in mods:
        enc = encoders[mod]
        in_path = folder / f"inputs_{mod}.safetensors"
        pre_path = folder / f"prefix_{mod}.safetensors"
        inputs = None
        if not in_path.exists():
            t0 = time.perf_counter()
            try:
                inputs, bad = _prepare_inputs(enc, dataset.decoder(mod), meta["sources"][mod], mod,
                                              chunk_size, workers, show, skip_bad=skip_bad,
                                              parts=folder / "parts")
            except DataError as e:
                # The index lists every file: a stamp removed from disk is still in it.
                raise DataError(f"{e} (Note: {records_path} lists the files indexed for this "
                                f"cache; if you remove files rather than restore them, delete "
                                f"{folder} as well so that the data are indexed again.)") from e
            _write_unreadable(folder / f"unreadable_{mod}.json", bad)  # before the inputs, as for parts
            _atomic_save_tensors(in_path, inputs)
            for f in (folder / "parts").glob(f"{mod}-*"):  # merged into in_path
                f.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # gone once every modality is merged
                (folder / "parts").rmdir()
            timings[f"inputs_{mod}_s"] = time.perf_counter() - t0
        if data.cache_prefix and not pre_path.exists():
            t0 = time.perf_counter()
            inputs = inputs if inputs is not None else _load_tensors(in_path)
            _atomic_save_tensors(pre_path, _prepare_prefix(enc, inputs, mod, chunk_size, show))
            timings[f"prefix_{mod}_s"] = time.perf_counter() - t0
    for k, v in timings.items():
        log.info("prepare %s: %s %.1f s", data.dataset, k, v)

    prepared = PreparedData.from_folder(folder, mods, use_prefix=data.cache_prefix,
                                        split_fn=ds_cls.split_samples, fractions=data.split)
    if prepared.unreadable and not skip_bad:
        raise DataError(f"{len(prepared.unreadable)} file(s) of this data set could not be read when it was "
                        f"prepared (with data.on_missing=skip), e.g. {prepared.unreadable[0]} Fix or replace "
                        f"them and delete {folder}, or run with data.on_missing=skip.")
    prepared.timings = timings
    return prepared


class PreparedData:
    """A prepared data set in memory: records, labels, domains and per modality the cached
    tensors (block-1 prefix tokens, or the encoder's inputs). ``batch(idx)`` gathers samples."""

    def __init__(self, meta: dict, tensors: dict[str, dict[str, torch.Tensor]],
                 use_prefix: bool, split_fn: Callable, fractions: Sequence[float] = (0.7, 0.1, 0.2),
                 folder: Path | None = None):
        self.folder = folder
        self.meta = meta
        self.records: list[dict] = meta["records"]
        self.classes: list[str] = list(meta["classes"])
        self.domains: list[str] = list(meta["domains"])
        self.info: dict = meta.get("info", {})
        self.modalities = list(tensors)
        self.use_prefix = use_prefix
        self.tensors = tensors
        self.fractions = list(fractions)
        self._split_fn = split_fn
        self.timings: dict[str, float] = {}
        self.excluded: set[int] = set()  # samples with an unreadable file (exclude_unreadable)
        self.unreadable: list[str] = []
        self.labels = torch.tensor([r["label"] for r in self.records], dtype=torch.long)
        self.domain_ids = torch.tensor([r["domain"] for r in self.records], dtype=torch.long)
        # sample index -> row of each modality's tensors (an image row is shared by languages)
        self.rows = {m: torch.tensor([r["rows"][m] for r in self.records], dtype=torch.long)
                     for m in self.modalities}
        # Per-row valid lengths let batch() trim padding to the longest sample it holds.
        self._lengths: dict[str, torch.Tensor | None] = {}
        self._trim_keys: dict[str, set[str]] = {}
        for m in tensors:
            self._index_lengths(m)

    def _index_lengths(self, m: str) -> None:
        ts = self.tensors[m]
        n_rows = next(iter(ts.values())).shape[0]
        if int(self.rows[m].max()) >= n_rows:
            raise DataError(f"cached {m} tensors in {self.folder} have {n_rows} rows, fewer than "
                            f"records.json refers to: delete {self.folder} and prepare again")
        mkey = _mask_key(ts)
        if mkey is None:
            self._lengths[m], self._trim_keys[m] = None, set()
            return
        n = ts[mkey].shape[1]
        self._lengths[m] = valid_lengths(ts[mkey])
        self._trim_keys[m] = {k for k, v in ts.items() if v.dim() >= 2 and v.shape[1] == n}

    def inputs(self, m: str) -> dict[str, torch.Tensor]:
        """The encoder inputs of modality m for every row (from the cache when prefixes are served)."""
        if not self.use_prefix:
            return self.tensors[m]
        if self.folder is None:
            raise DataError(f"no cache folder to read the {m} inputs from")
        return _load_tensors(self.folder / f"inputs_{m}.safetensors")

    def reencode(self, m: str, enc, chunk: int = 256) -> None:
        """After enc changed (encoders.<m>.fit): recompute m's cached prefix tokens in memory."""
        if self.use_prefix:
            self.tensors[m] = _prepare_prefix(enc, self.inputs(m), m, chunk, show=False)
            self._index_lengths(m)

    @classmethod
    def from_folder(cls, folder: str | Path, modalities: Iterable[str], use_prefix: bool,
                    split_fn: Callable, fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> PreparedData:
        folder = Path(folder)
        meta = _read_records(folder / "records.json")
        kind = "prefix" if use_prefix else "inputs"
        tensors = {}
        for m in modalities:
            path = folder / f"{kind}_{m}.safetensors"
            if not path.exists():
                raise DataError(f"{path} is missing: run prepare (mmcl prepare) for this config")
            tensors[m] = _load_tensors(path)
        unreadable = {m: _read_unreadable(folder / f"unreadable_{m}.json") for m in modalities}
        out = cls(meta, tensors, use_prefix, split_fn, fractions, folder)
        out.exclude_unreadable(unreadable)
        return out

    def exclude_unreadable(self, unreadable: dict[str, dict[int, str]]) -> None:
        """Leave out of every split the samples that use an unreadable file ({modality: {row:
        message}}, from preparation with data.on_missing=skip); log the count and the files."""
        seen: dict[str, str] = {}  # one file read for two modalities (accel + gyro, a video's audio) counts once
        for m, rows in unreadable.items():
            sources = self.meta.get("sources", {}).get(m, [])
            for r, msg in rows.items():
                seen.setdefault(str(sources[r]) if r < len(sources) else f"{m}:{r}", msg)
        self.unreadable = list(seen.values())
        bad = set()
        for m, rows in unreadable.items():
            if m in self.rows and rows:
                hit = torch.isin(self.rows[m], torch.tensor(sorted(rows), dtype=torch.long))
                bad.update(int(i) for i in torch.nonzero(hit).flatten())
        self.excluded = bad
        if bad:
            log.warning("%d sample(s) left out: %d file(s) could not be read (data.on_missing=skip); e.g. %s",
                        len(bad), len(self.unreadable), self.unreadable[0])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def batch(self, idx) -> dict[str, Any]:
        """Samples idx -> {mod: {"tokens": float32 (b, N, D), "mask": bool (b, N) or None}}
        (prefix cached) or {mod: {input key: tensor}}, plus "label", "domain", "index".
        Masked modalities are trimmed to the longest valid sample in the batch."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        out: dict[str, Any] = {}
        for m in self.modalities:
            rows = self.rows[m].index_select(0, idx)
            lengths = self._lengths[m]
            n = max(int(lengths.index_select(0, rows).max()), 1) if lengths is not None and len(rows) else None
            item = {}
            for k, t in self.tensors[m].items():
                if n is not None and k in self._trim_keys[m]:
                    t = t[:, :n]  # slice the view first: only b x n rows are copied
                v = t.index_select(0, rows)
                item[k] = v.float() if k == "tokens" else v
            if self.use_prefix:
                item.setdefault("mask", None)  # the encoder gave none: every token is real
            out[m] = item
        out["label"] = self.labels.index_select(0, idx)
        out["domain"] = self.domain_ids.index_select(0, idx)
        out["index"] = idx.clone()
        return out

    def split(self, seed: int, fractions: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """{"train", "val", "test"} -> sample indices, fixed by seed (the data set's rule)."""
        splits = self._split_fn(self.records, list(fractions or self.fractions), seed)
        if self.excluded:
            drop = np.fromiter(self.excluded, dtype=np.int64)
            splits = {k: v[~np.isin(v, drop)] for k, v in splits.items()}
        return splits

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self.tensors.values() for t in ts.values())


def move_batch(batch: dict, device, non_blocking: bool = False) -> dict:
    """A batch (nested dicts of tensors, None for absent masks) moved to device."""
    if isinstance(batch, dict):
        return {k: move_batch(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    return batch
