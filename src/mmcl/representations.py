"""The learned representations of a run's test samples, for the report's t-SNE figure.

After each task of ``report.tsne_after`` the engine stores z_joint and every modality's z_k of
the test samples of the tasks seen so far in ``RUN_DIR/representations.npz`` (float16, 0.8 MB
for the default run), so that ``mmcl report RUN_DIR --tsne`` draws them without the
model. Arrays, per stored task t (1-based): ``after<t>.joint``, ``after<t>.<modality>``
(n, dim_z; NaN rows for samples that miss the modality), ``after<t>.label`` (class index),
``after<t>.task`` (the 1-based task each sample belongs to); and ``classes`` (class names), ``modalities``.

``embed_2d`` is the t-SNE itself: scikit-learn's Barnes-Hut TSNE (an
optional extra, ``pip install 'mmcl[tsne]'``). scikit-learn rather than openTSNE: the test
sets here are a few hundred to a few thousand points, where Barnes-Hut takes seconds and
openTSNE's FFT interpolation brings nothing, and scikit-learn is the better-kept, more widely
installed package (openTSNE also needs a compiled wheel of its own).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from mmcl.settings import ConfigError

REPRESENTATIONS_FILE = "representations.npz"


def tasks_to_store(after: list[int], num_tasks: int) -> list[int]:
    """report.tsne_after resolved to 1-based task numbers (-1: the last), sorted; a number out
    of range is an error naming the key."""
    out = set()
    for t in after:
        n = num_tasks if t == -1 else t
        if not 1 <= n <= num_tasks:
            raise ConfigError(f"config key 'report.tsne_after': task {t} does not exist (the run has tasks "
                              f"1..{num_tasks}; -1 is the last)")
        out.add(n)
    return sorted(out)


def load_representations(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    path = Path(run_dir) / REPRESENTATIONS_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save_representations(run_dir: str | Path, task: int, reps: dict[str, Any], labels: Any, tasks: Any,
                         classes: list[str], modalities: list[str]) -> Path:
    """Add (or replace) the arrays of ``task`` (1-based) in representations.npz, atomically."""
    from mmcl.io import atomic_write
    arrays = load_representations(run_dir) or {}
    for k in [k for k in arrays if k.startswith(f"after{task}.")]:
        del arrays[k]
    for name, z in reps.items():
        arrays[f"after{task}.{name}"] = np.asarray(z, dtype=np.float16)
    arrays[f"after{task}.label"] = np.asarray(labels, dtype=np.int32)
    arrays[f"after{task}.task"] = np.asarray(tasks, dtype=np.int16)
    arrays["classes"] = np.array([str(c) for c in classes])
    arrays["modalities"] = np.array([str(m) for m in modalities])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write(Path(run_dir) / REPRESENTATIONS_FILE, lambda f: f.write(buf.getvalue()), "wb")


def store_test_representations(run_dir: str | Path, method: Any, tasks: list, data: Any, t: int) -> Path:
    """After task t (0-based): z_joint and every z_k (``method.representations``) of the test
    samples of tasks 1..t+1, with their labels and tasks, into representations.npz."""
    import torch
    idx = torch.cat([tasks[i].test for i in range(t + 1)])
    owner = torch.cat([torch.full((len(tasks[i].test),), i + 1) for i in range(t + 1)])
    reps = method.representations(idx)
    return save_representations(run_dir, t + 1, {k: v.numpy() for k, v in reps.items()},
                                data.labels[idx].numpy(), owner.numpy(), list(data.classes),
                                [k for k in reps if k != "joint"])


def stored_tasks(arrays: dict[str, np.ndarray]) -> list[int]:
    return sorted({int(k.split(".")[0][5:]) for k in arrays if k.startswith("after") and k.endswith(".joint")})


def tsne_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("sklearn") is not None


def embed_2d(z: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of the rows of z, L2-normalised first (the losses compare representations by
    cosine similarity), with scikit-learn's Barnes-Hut TSNE from a PCA initialisation."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as e:
        raise RuntimeError("the t-SNE figure needs scikit-learn: pip install 'mmcl[tsne]' "
                           "(or pip install scikit-learn)") from e
    z = np.asarray(z, dtype=np.float32)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    n = len(z)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 samples, got {n}")
    perplexity = float(min(30.0, (n - 1) / 3.0))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(z)


def tsne_panels(arrays: dict[str, np.ndarray], seed: int = 0) -> list[dict]:
    """For every stored task: 2-D t-SNE of z_joint, and one t-SNE of all modalities' z_k
    stacked (so the panel shows whether a sample's modalities land together). Returns rows of
    {after, joint, label, task, mod_xy, mod_label, mod_index, modalities, classes} for
    mmcl.plots.tsne_figure."""
    classes = [str(c) for c in arrays.get("classes", [])]
    modalities = [str(m) for m in arrays.get("modalities", [])]
    rows = []
    for t in stored_tasks(arrays):
        pre = f"after{t}."
        mods = [m for m in modalities if pre + m in arrays]
        label = arrays[pre + "label"]
        stacked = np.concatenate([arrays[pre + m] for m in mods]) if mods else None
        mod_label, mod_index = np.tile(label, len(mods)), np.repeat(np.arange(len(mods)), len(label))
        if stacked is not None:  # a sample's masked modality has no z_k (NaN rows): not drawn
            real = np.isfinite(stacked).all(1)
            stacked, mod_label, mod_index = stacked[real], mod_label[real], mod_index[real]
        rows.append({
            "after": t, "joint": embed_2d(arrays[pre + "joint"], seed), "label": label, "task": arrays[pre + "task"],
            "mod_xy": embed_2d(stacked, seed) if stacked is not None else None,
            "mod_label": mod_label, "mod_index": mod_index, "modalities": mods, "classes": classes})
    return rows
