"""Prepared data: decode a data set once, cache it on disk, serve batches from memory.

Encoders are frozen and inputs are not augmented, so everything up to the first adapter is a
pure function of the file on disk. ``prepare`` decodes every file once, runs each encoder's
``preprocess`` (resize / tokenize / filter bank) and, with ``data.cache_prefix``, its
``prefix`` (tokenizer + block 1), and stores the results as safetensors. Training then
gathers batches with ``index_select`` on in-memory tensors: no decoding, no data loader.

Cache folder: ``<data.cache_dir>/<dataset>/<key>/`` where key hashes the settings that change
the inputs and every used encoder's ``identity()``::

    records.json               samples (class, domain, row per modality: -1 when the sample
                               has no such modality) and their sources
    inputs_<mod>.safetensors   the encoder's preprocess output for every row
    parts/<mod>-<row>.*        while a modality is decoded: every SHARD_ROWS rows as they are
                               done (an interrupted preparation resumes from them); merged
                               into inputs_<mod> and removed at the end
    unreadable_<mod>.json      rows whose file could not be decoded (data.on_missing=skip / mask)
    prefix_<mod>.safetensors   {"tokens": fp16 (R, N, D), "mask": bool (R, N) when masked}

Each file is written atomically (temporary name in the same folder, then ``os.replace``), so
a file that exists is complete; an interrupted preparation resumes with the missing files.
The two steps are in mmcl.data.pipeline, reading and writing these files in mmcl.data.cache,
and the prepared data set that ``prepare`` returns in mmcl.data.prepared_data.

A data set (registered with ``@register_dataset``) provides: ``__init__(data_cfg)``,
``modalities``, ``classes``, ``domains``, ``settings() -> dict``, ``index() -> (records,
sources)``, ``decoder(modality) -> picklable callable or None``, ``info() -> dict`` and
``split_samples(records, fractions, seed)``. Splits are computed at load time from the seed,
never cached, so one prepared cache serves every seed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from mmcl import registry
from mmcl.data.cache import (
    FORMAT_VERSION,
    cache_key,
    load_tensors,
    read_records,
    save_cache_tensors,
    write_cache_json,
    write_unreadable,
)
from mmcl.data.errors import DataError
from mmcl.data.pipeline import prepare_inputs, prepare_prefix
from mmcl.data.prepared_data import PreparedData

log = logging.getLogger(__name__)


def _show_progress(progress: bool) -> bool:
    return bool(progress) and sys.stderr.isatty()


# -- public API -------------------------------------------------------------------------------
def cache_folder(cfg, encoders: dict[str, Any]) -> Path:
    """Where ``prepare`` caches ``cfg.data`` with these encoders (does not create it)."""
    data = cfg.data
    dataset = registry.get("dataset", data.dataset)(data)
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
    data = cfg.data
    ds_cls = registry.get("dataset", data.dataset)
    dataset = ds_cls(data)
    folder = _folder(data, dataset, encoders)
    mods = list(data.modalities)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    on_missing = getattr(data, "on_missing", "fail")
    skip_bad = on_missing in ("skip", "mask")  # an unreadable file is listed, not fatal
    show = _show_progress(progress)
    with cache_lock(folder, data.dataset):
        timings = _fill(folder, data, dataset, encoders, mods, chunk_size, workers, show, skip_bad)
    prepared = PreparedData.from_folder(folder, mods, use_prefix=data.cache_prefix,
                                        split_fn=ds_cls.split_samples, fractions=data.split,
                                        mask_unreadable=on_missing == "mask")
    if prepared.unreadable and not skip_bad:
        raise DataError(f"{len(prepared.unreadable)} file(s) of this data set could not be read when it was "
                        f"prepared (with data.on_missing=skip or mask), e.g. {prepared.unreadable[0]} Fix or "
                        f"replace them and delete {folder}, or run with data.on_missing=skip (leave those "
                        "samples out) or mask (keep them with that modality masked).")
    prepared.timings = timings
    return prepared


@contextlib.contextmanager
def cache_lock(folder: Path, dataset: str):
    """Hold ``<folder>.lock`` (an OS file lock, the ``filelock`` package) while the cache folder is
    checked and written: concurrent preparations of one data set (a sweep's jobs, cluster jobs on a
    shared file system) take turns, and the later ones find the cache complete and only load it.
    The lock is released when its holder dies, so a killed preparation blocks nobody."""
    from filelock import FileLock, Timeout

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data cache folder {folder.parent}: {e}. Set data.cache_dir "
                        "(or MMCL_CACHE) to a writable folder.") from e
    lock = FileLock(str(folder.with_name(folder.name + ".lock")))
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        log.warning("waiting for another process that prepares %s in %s", dataset, folder)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _fill(folder: Path, data, dataset, encoders, mods, chunk_size, workers, show, skip_bad) -> dict[str, float]:
    """Write what is missing of the cache folder; returns the timings of what was written."""
    timings: dict[str, float] = {}
    records_path = folder / "records.json"
    if records_path.exists():
        meta = read_records(records_path)
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
        write_cache_json(records_path, meta)
        timings["index_s"] = time.perf_counter() - t0

    for mod in mods:
        enc = encoders[mod]
        in_path = folder / f"inputs_{mod}.safetensors"
        pre_path = folder / f"prefix_{mod}.safetensors"
        inputs = None
        if not in_path.exists():
            if not meta["sources"][mod]:
                raise DataError(f"no sample of {data.dataset} has a {mod} (every one is missing): take it out of "
                                f"data.modalities={list(mods)}")
            t0 = time.perf_counter()
            try:
                inputs, bad = prepare_inputs(enc, dataset.decoder(mod), meta["sources"][mod], mod,
                                             chunk_size, workers, show, skip_bad=skip_bad,
                                             parts=folder / "parts")
            except DataError as e:
                # The index lists every file: a stamp removed from disk is still in it.
                raise DataError(f"{e} (Note: {records_path} lists the files indexed for this "
                                f"cache; if you remove files rather than restore them, delete "
                                f"{folder} as well so that the data are indexed again.)") from e
            write_unreadable(folder / f"unreadable_{mod}.json", bad)  # before the inputs, as for parts
            save_cache_tensors(in_path, inputs)
            for f in (folder / "parts").glob(f"{mod}-*"):  # merged into in_path
                f.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # gone once every modality is merged
                (folder / "parts").rmdir()
            timings[f"inputs_{mod}_s"] = time.perf_counter() - t0
        if data.cache_prefix and not pre_path.exists():
            t0 = time.perf_counter()
            inputs = inputs if inputs is not None else load_tensors(in_path)
            save_cache_tensors(pre_path, prepare_prefix(enc, inputs, mod, chunk_size, show))
            timings[f"prefix_{mod}_s"] = time.perf_counter() - t0
    for k, v in timings.items():
        log.info("prepare %s: %s %.1f s", data.dataset, k, v)
    return timings
