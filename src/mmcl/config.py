"""Typed experiment configuration.

Every number that shapes an experiment is a field here, with a default and a one-line doc
(``doc(...)`` metadata). Layers, later ones winning:

    built-in defaults (the dataclasses below)
    <- the method's defaults (``methods/<method.name>.yaml``, when the method has one; e.g.
       the baselines run without cross-modality adapters: ``model: {adapters: false}``)
    <- the preset (``presets/*.yaml`` or a YAML file)
    <- ``key=value`` overrides (command line or Python API)

``method.name`` is resolved first (overrides, else the preset, else the default 'cma') to pick
the method's YAML. Unknown keys and wrong types fail with a
message that names the key and suggests the closest valid one.

Defaults marked [C] are our choices where the paper's text is not available
(see docs/METHOD.md); [P] marks what the paper states.
"""
from __future__ import annotations

import difflib
import numbers
import os
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError, OmegaConfBaseException


class ConfigError(ValueError):
    """A user error in a configuration: names the key or value and what to do."""


def doc(text: str, default: Any = MISSING, factory: Any = MISSING):
    kw = {"metadata": {"doc": text}}
    if factory is not MISSING:
        return field(default_factory=factory, **kw)
    return field(default=default, **kw)


def _default_cache_dir() -> str:
    return os.environ.get("MMCL_CACHE", str(Path.home() / ".cache" / "mmcl"))


TUXPAINT_CLASSES = [
    "animals/mammals", "food/fruit", "animals/birds", "town/houses", "symbols/money",
    "plants/flowers", "town/roadsigns", "food/vegetables", "seasonal/christmas",
    "seasonal/halloween", "animals/insects", "symbols/music", "symbols/chess", "clothes",
    "hobbies/music", "seasonal/easter",
]
TUXPAINT_LANGUAGES = ["fr", "ru", "ro", "ca", "bg", "es"]


@dataclass
class RunConfig:
    name: str = doc("run folder name under run.out_dir; empty: '<preset>-<method>-s<seed>'", "")
    out_dir: str = doc("parent folder of run folders", "runs")
    seed: int = doc("seed for class order, splits, initialisation, routing noise, sampling", 0)
    device: str = doc("'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available)", "auto")
    threads: int = doc("torch CPU threads; 0 keeps torch's default", 0)
    progress: str = doc("progress bars: 'auto' (only on a terminal), 'always' or 'never'", "auto")
    save_checkpoint: bool = doc("write the final checkpoint (safetensors + JSON) to checkpoints/", True)


# Modality slots: a modality's name (in data.modalities, encoders.<name>.*, a manifest's columns)
# -> the input type its encoder takes. [C] A fixed, documented set rather than free-form names,
# so that every encoders.<name>.* key is a documented, type-checked config key. A new slot is one
# entry here and one field in EncodersConfig.
MODALITY_TYPES = {"image": "image", "video": "video", "text": "text", "speech": "audio",
                  "audio": "audio", "accel": "sensor", "gyro": "sensor"}


@dataclass
class EncoderConfig:
    kind: str = doc("registered encoder: mobilenetv2, vit (image); vit_video, videomae (video); hf_text "
                    "(text); ge2e, ast (speech, audio); imu (accel, gyro)", "")
    source: str = doc(
        "where weights come from: 'package' (weights shipped in a pip package), a local "
        "folder or file, a Hugging Face id (hf_text; read from the local Hugging Face cache, "
        "downloaded only when MMCL_DOWNLOAD=1), or 'random' (tiny random config, tests)", "package")
    fit: str = doc("imu only: 'none' (frozen at its weights: seeded random for source=random) or 'first_task' "
                   "(trained with a linear head on task 1's training data before task 1, then frozen; the "
                   "weights are saved in the run folder as fitted_<modality>.safetensors) [C]", "none")
    fit_epochs: int = doc("epochs of the 'first_task' fit (AdamW, train.lr, train.batch_size)", 10)
    width: int = doc("hidden width of the 'random' config (tests); ignored otherwise", 32)
    layers: int = doc("layer count of the 'random' config (tests); ignored otherwise", 3)


@dataclass
class EncodersConfig:
    image: EncoderConfig = doc("image encoder", factory=lambda: EncoderConfig(kind="mobilenetv2"))
    text: EncoderConfig = doc("text encoder", factory=lambda: EncoderConfig(kind="hf_text"))
    speech: EncoderConfig = doc("speech encoder", factory=lambda: EncoderConfig(kind="ge2e"))
    video: EncoderConfig = doc("video encoder (frames)", factory=lambda: EncoderConfig(
        kind="vit_video", source="google/vit-base-patch16-224-in21k"))
    audio: EncoderConfig = doc("audio (sound) encoder; not fine-tuned on AudioSet by default (AVE leakage, "
                               "see docs/datasets.md)", factory=lambda: EncoderConfig(
                                   kind="ast", source="MIT/ast-finetuned-speech-commands-v2"))
    accel: EncoderConfig = doc("accelerometer encoder (no public pre-trained model: frozen random "
                               "by default)", factory=lambda: EncoderConfig(kind="imu", source="random", width=64))
    gyro: EncoderConfig = doc("gyroscope encoder (as accel)", factory=lambda: EncoderConfig(
        kind="imu", source="random", width=64))


@dataclass
class DataConfig:
    dataset: str = doc("registered data set: tuxpaint, manifest (your own data; `mmcl list`)", "tuxpaint")
    manifest: str = doc("manifest data set: the CSV / JSONL file, one row per sample (columns label, one per "
                        "modality, optional domain / split / group; see the README)", "")
    domains: list[str] = doc("manifest, samsemo: domains used (empty: all; manifest: in order of appearance, "
                             "samsemo: EN, DE, ES, PL, KO)", factory=list)
    multi_label: str = doc("samsemo: an utterance with several of data.classes among its aggregated emotions: "
                           "'drop' (left out, counted) or 'first' (labelled with the first listed) [C]", "drop")
    on_missing: str = doc("a sample whose file is missing or cannot be decoded: 'fail' (stop, naming the file) "
                          "or 'skip' (leave the sample out; counted, listed in the run's data info)", "fail")
    root: str = doc("data set root; empty: $MMCL_<DATASET>_ROOT (e.g. MMCL_TUXPAINT_ROOT, MMCL_AVE_ROOT), else "
                    "the folder last given to `mmcl prepare <preset> --root DIR`, else (tuxpaint only) "
                    "/usr/share/tuxpaint/stamps (docs/datasets.md)", "")
    cache_dir: str = doc("where prepared data is cached ($MMCL_CACHE)", factory=_default_cache_dir)
    modalities: list[str] = doc("modalities used, in order", factory=lambda: ["image", "text", "speech"])
    classes: list[str] = doc("class names (tuxpaint: stamp folders; manifest: empty = every label)", factory=lambda: list(TUXPAINT_CLASSES))
    languages: list[str] = doc("languages (tuxpaint: one sample per stamp and language)",
                               factory=lambda: list(TUXPAINT_LANGUAGES))
    split: list[float] = doc("train / val / test fractions, split by stamp with the seed", factory=lambda: [0.7, 0.1, 0.2])
    image_size: int = doc("images are resized to this square size (pixels)", 128)
    max_text_tokens: int = doc("text is truncated to this many tokens", 64)
    max_speech_seconds: float = doc("speech and audio are cut to this many seconds", 3.0)
    video_frames: int = doc("frames sampled per video clip, evenly spaced over the clip [C]", 8)
    sensor_length: int = doc("inertial-sensor recordings are linearly resampled to this many samples [C]", 192)
    sensor_window: int = doc("sensor samples per token of the imu encoder (UESTC-MMEA-CL's official window: 24)", 24)
    sample_rate: int = doc("speech is resampled to this rate (Hz); GE2E expects 16000", 16000)
    cache_prefix: bool = doc(
        "cache each frozen encoder's prefix (tokenizer + block 1, before the first adapter) at "
        "preparation time; exact because inputs are not augmented", True)
    max_stamps_per_class: int = doc("cap on stamps per class (0: all); for quick experiments", 0)


@dataclass
class ScenarioConfig:
    kind: str = doc("'class' (class-incremental, growing head) or 'domain' (domain-incremental, fixed head)", "class")
    num_tasks: int = doc("number of tasks (class: classes split evenly; domain: one domain per task)", 4)
    class_order: str = doc("'seed' (shuffled by run.seed) or 'given' (data.classes order)", "seed")


@dataclass
class ModelConfig:
    blocks: int = doc("B: each frozen encoder's layers are split into B contiguous groups [C]", 3)
    dim_z: int = doc("width of per-modality and joint representations [C]", 256)
    head_hidden: int = doc("hidden width of the projection and fusion MLPs [C]", 256)
    pool: str = doc("token pooling before projection: 'mean' (over valid tokens)", "mean")
    input_norm: bool = doc("LayerNorm on the inputs of the projection and fusion MLPs [C]", True)
    adapters: bool = doc("cross-modality adapters after every block; false = frozen features only", True)
    length_chunks: int = doc("skip padding: a batch's rows run in up to this many groups of similar length "
                             "(by the most padded modality), and each encoder block's rows in up to this "
                             "many groups by that modality's own lengths, each group trimmed to its "
                             "longest row (exact up to rounding; 1 = everything padded to the longest "
                             "row)", 2)


@dataclass
class AdapterConfig:
    num_experts: int = doc("experts per block [P: 10]", 10)
    top_k: int = doc("experts chosen per routing [P: 2]", 2)
    dense: bool = doc("ablation: softmax over all experts, every expert computed (no top-k)", False)
    dim: int = doc("shared adapter width d [C]", 128)
    expert: str = doc("'cross_attention' or 'channel_token_map' [C]", "cross_attention")
    context_tokens: int = doc("other modalities' tokens are mean-pooled to at most this many each [C]", 32)
    route: str = doc("routing granularity: 'sample' (per sample and modality) [C]", "sample")
    noisy_gating: bool = doc("learned Gaussian noise on gate logits in training (noisy top-k) [C]", True)
    balance_weight: float = doc("lambda_lb of cv^2(importance) + cv^2(load) [C]", 0.01)


@dataclass
class FreezeConfig:
    enabled: bool = doc("freeze heavily used experts after each task [P]", True)
    threshold: float = doc("freeze experts whose routing share f_e exceeds this [P: 0.10]", 0.10)
    normalize: str = doc("'slots': f_e = count_e / (top_k * routings), shares sum to 1 [C]", "slots")


@dataclass
class LossConfig:
    distil: float = doc("lambda_d, weight of L_distil [C]", 1.0)
    align: float = doc("lambda_a, weight of L_align [C]", 1.0)
    preserve: float = doc("lambda_p, weight of L_preserve [C]", 1.0)
    distil_T: float = doc("distillation temperature [C]", 2.0)
    distil_on_current: bool = doc("also distil on the current batch (old outputs computed once at task start) [C]", False)
    align_kind: str = doc("'joint_infonce', 'joint_cosine' or 'pairwise_infonce' (the paper's ablation) [C]", "joint_infonce")
    align_tau: float = doc("temperature of the InfoNCE alignment [C]", 0.1)
    align_detach_joint: bool = doc("stop gradients through z_joint in L_align (the joint is the anchor) [C]", True)
    preserve_tau: float = doc("temperature of the pairwise-similarity distributions [C]", 0.1)


@dataclass
class MemoryConfig:
    size: int = doc("rehearsal memory size in samples [P: 200]", 200)
    selection: str = doc("'herding' (on z_joint) or 'random' [C]", "herding")
    batch_size: int = doc("memory samples drawn per training step from task 2 on [C]", 32)


@dataclass
class TrainConfig:
    epochs: int = doc("epochs per task", 3)
    batch_size: int = doc("current-task samples per step [C]", 32)
    lr: float = doc("AdamW learning rate [C]", 1e-3)
    weight_decay: float = doc("AdamW weight decay [C]", 1e-4)
    schedule: str = doc("'cosine' within each task, or 'constant'", "cosine")
    precision: str = doc("'fp32' or 'bf16' (autocast)", "fp32")
    grad_clip: float = doc("max gradient norm; 0 disables", 0.0)


@dataclass
class EvalConfig:
    batch_size: int = doc("evaluation batch size", 128)


@dataclass
class MethodConfig:
    name: str = doc("registered method ('cma': the paper's method; baselines: finetune, joint, er, lwf, ewc, "
                    "derpp, icarl, l2p, dualprompt, codaprompt; `mmcl list`)", "cma")
    lwf_alpha: float = doc("lwf: weight of the distillation term", 1.0)
    lwf_T: float = doc("lwf: distillation temperature", 2.0)
    ewc_lambda: float = doc("ewc: penalty weight lambda in lambda/2 * sum F (theta - theta*)^2", 100.0)
    ewc_gamma: float = doc("ewc: online-EWC decay of the accumulated Fisher (1: plain sum over tasks)", 1.0)
    derpp_alpha: float = doc("derpp: weight of the MSE between logits and stored logits (DER term)", 0.1)
    derpp_beta: float = doc("derpp: weight of the cross-entropy on a second memory batch (++ term)", 0.5)
    prompt_train_mask: bool = doc("l2p, dualprompt, codaprompt: in class-incremental tasks, train on the current "
                                  "task's classes only (old-class logits masked), as the three papers do", True)
    prompt_pull: float = doc("l2p, dualprompt: weight of the key-query matching term sum(1 - cos(query, key))", 0.1)
    l2p_pool: int = doc("l2p: prompts in each modality's pool (M)", 10)
    l2p_length: int = doc("l2p: tokens per prompt (L)", 5)
    l2p_top_k: int = doc("l2p: prompts chosen per sample (N)", 5)
    dualprompt_g_length: int = doc("dualprompt: tokens of the shared G-prompt", 5)
    dualprompt_e_length: int = doc("dualprompt: tokens of each task's E-prompt", 20)
    dualprompt_g_blocks: int = doc("dualprompt: prompted blocks that get the G-prompt (the first ones; the "
                                   "later ones get E-prompts). Block 1 is cached and never prompted", 1)
    coda_components: int = doc("codaprompt: prompt components added per task and per modality and block", 10)
    coda_length: int = doc("codaprompt: tokens per component", 8)
    coda_ortho: float = doc("codaprompt: weight of the orthogonality penalty (0: Gram-Schmidt initialisation "
                            "only)", 0.0)


@dataclass
class Config:
    preset: str = doc("preset this config started from", "")
    run: RunConfig = doc("run folder, seed, device", factory=RunConfig)
    data: DataConfig = doc("data set and preparation", factory=DataConfig)
    encoders: EncodersConfig = doc("frozen pre-trained encoders per modality", factory=EncodersConfig)
    scenario: ScenarioConfig = doc("task stream", factory=ScenarioConfig)
    model: ModelConfig = doc("MMEncoder and heads", factory=ModelConfig)
    adapter: AdapterConfig = doc("cross-modality adapter (mixture of experts)", factory=AdapterConfig)
    freeze: FreezeConfig = doc("expert freezing", factory=FreezeConfig)
    loss: LossConfig = doc("loss weights and parameters", factory=LossConfig)
    memory: MemoryConfig = doc("rehearsal memory", factory=MemoryConfig)
    train: TrainConfig = doc("optimisation", factory=TrainConfig)
    eval: EvalConfig = doc("evaluation", factory=EvalConfig)
    method: MethodConfig = doc("method", factory=MethodConfig)


# ---------------------------------------------------------------------------------------------
def iter_keys(cls=Config, prefix: str = ""):
    """Yield (dotted key, type name, default, doc) for every leaf key of the config."""
    yield from _iter_instance(cls(), prefix)


def _iter_instance(inst, prefix):
    for f in fields(inst):
        key = f"{prefix}{f.name}"
        value = getattr(inst, f.name)
        if is_dataclass(value):
            yield from _iter_instance(value, key + ".")
        else:
            yield key, _type_name(f.type), value, f.metadata.get("doc", "")


def _type_name(t) -> str:
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def valid_keys() -> list[str]:
    return [k for k, *_ in iter_keys()]


def config_reference() -> str:
    """Markdown table of every config key (docs/config.md is generated from this)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, text in iter_keys():
        if key == "data.cache_dir":
            default = "$MMCL_CACHE or ~/.cache/mmcl"
        lines.append(f"| `{key}` | {typ} | `{default}` | {text} |")
    return "\n".join(lines) + "\n"


def _closest(key: str) -> str:
    keys = valid_keys()
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not match:  # also try the last component alone (e.g. 'epochs' -> 'train.epochs')
        tails = {k.split(".")[-1]: k for k in keys}
        m = difflib.get_close_matches(key.split(".")[-1], list(tails), n=1, cutoff=0.6)
        match = [tails[m[0]]] if m else []
    return f" Did you mean '{match[0]}'?" if match else " Run 'mmcl run --help' for the list of keys."


def _groups() -> set[str]:
    keys = valid_keys()
    return {k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1)}


def _group_error(key: str, where: str = "") -> ConfigError:
    members = [k for k in valid_keys() if k.startswith(key + ".")]
    example = members[0]
    return ConfigError(f"'{key}' is a group of config keys, not a key{where}: set its keys one by one, "
                       f"e.g. {example}={_example(example)} (its keys: {', '.join(members)})")


def _check_keys(d: dict, where: str, prefix: str = "", check_values: bool = False) -> None:
    """Reject unknown keys with the closest valid key named (before OmegaConf's terser error);
    with check_values, also values of the wrong type (naming the key and the expected type)."""
    keys = set(valid_keys())
    groups = _groups()
    for k, v in d.items():
        full = f"{prefix}{k}"
        if full in groups:
            if not isinstance(v, dict):
                raise _group_error(full, f" (in {where})")
            _check_keys(v, where, full + ".", check_values)
        elif full not in keys:
            raise ConfigError(f"unknown config key '{full}' in {where}.{_closest(full)}")
        elif check_values:
            _check_value(full, v, where)


def preset_names() -> list[str]:
    files = resources.files("mmcl.presets")
    return sorted(p.name[:-5].replace("_", "-") for p in files.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict:
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist. Pass an existing YAML file, or one "
                              f"of the built-in presets: {', '.join(preset_names())}.")
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read preset file {path}: {e}") from None
    else:
        fname = name.replace("-", "_") + ".yaml"
        res = resources.files("mmcl.presets") / fname
        if not res.is_file():
            near = difflib.get_close_matches(name, preset_names(), n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"unknown preset '{name}'.{hint} Available: {', '.join(preset_names())} "
                              "(or pass a path to a YAML file).")
        text, where = res.read_text(), f"preset '{name}'"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}. Fix the file "
                          "(indent nested keys, e.g. 'train:' then '  epochs: 3').") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a YAML mapping of config keys (e.g. 'train:' then "
                          f"'  epochs: 3'), not a {type(data).__name__}")
    data.pop("description", None)
    _check_keys(data, where, check_values=True)
    return data


_KEY_TYPES = {k: t for k, t, *_ in iter_keys()}
_KEY_DEFAULTS = {k: d for k, _, d, _ in iter_keys()}
_TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
               "list[str]": "a list of strings", "list[float]": "a list of numbers"}
_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def _example(key: str) -> str:
    """A valid command-line value for key (from its default), for error messages."""
    default, typ = _KEY_DEFAULTS[key], _KEY_TYPES[key]
    if typ.startswith("list"):
        items = list(default)[:2] if typ == "list[str]" else list(default)
        items = items or (["a", "b"] if typ == "list[str]" else [0.5, 0.5])
        return "[" + ",".join(str(x) for x in items) + "]"
    if typ == "bool":
        return str(default).lower()
    if typ == "str" and key == "data.root":
        return "/path/to/stamps"
    if typ == "str" and key == "data.cache_dir":
        return "/path/to/cache"
    return str(default) if default != "" else "NAME"


def _scalar_ok(typ: str, v: Any) -> bool:
    """Whether OmegaConf can take v for a key of type typ (Python API values included:
    numpy numbers, paths, numeric strings)."""
    if isinstance(v, bool):
        return typ in ("bool",)
    if typ == "int":
        if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):
            return float(v).is_integer()
        if isinstance(v, str):
            return re.fullmatch(r"\s*[-+]?\d+\s*", v) is not None
        return isinstance(v, numbers.Integral)
    if typ == "float":
        if isinstance(v, str):
            try:
                float(v)
                return True
            except ValueError:
                return False
        return isinstance(v, numbers.Real)
    if typ == "bool":
        return (isinstance(v, str) and v.strip().lower() in _BOOL_WORDS) or (
            isinstance(v, numbers.Integral) and v in (0, 1))
    if typ == "str":  # (a YAML boolean for a string key is almost always an unquoted 'off'/'no')
        return isinstance(v, (str, numbers.Real, os.PathLike))
    return True


def _check_value(key: str, v: Any, where: str = "") -> None:
    """Raise ConfigError naming key, the expected type and an example when v cannot be one."""
    typ = _KEY_TYPES.get(key)
    if typ is None:
        return
    if typ.startswith("list["):
        inner = typ[5:-1]
        ok = isinstance(v, (list, tuple)) and all(_scalar_ok(inner, x) for x in v)
    else:
        ok = _scalar_ok(typ, v)
    if ok:
        return
    got = "nothing" if v is None else f"{v!r} ({type(v).__name__})"
    src = f" in {where}" if where else ""
    hint = ""
    if typ == "str" and isinstance(v, bool):
        hint = " (YAML reads unquoted yes/no/on/off as booleans: quote the value)"
    elif typ.startswith("list[") and not isinstance(v, (list, tuple)):
        hint = " (write lists in brackets, without spaces on the command line)"
    raise ConfigError(f"config key '{key}' expects {_TYPE_WORDS.get(typ, typ)}, got {got}{src}{hint}. "
                      f"Example: {key}={_example(key)}")


def _plain(v: Any) -> Any:
    """Python API values -> what OmegaConf accepts: numpy scalars, paths and tuples converted."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # numpy / torch scalar
        return v.item()
    return v


def parse_overrides(items: list[str] | dict | None) -> dict:
    """'a.b=1' strings (or a {'a.b': 1} dict) -> nested dict, values parsed as YAML."""
    if not items:
        return {}
    if isinstance(items, dict):
        pairs = [(str(k), _plain(v)) for k, v in items.items()]
    else:
        pairs = []
        for item in items:
            if "=" not in item:
                raise ConfigError(f"override '{item}' is not of the form key=value")
            k, v = item.split("=", 1)
            k = k.strip()
            if _KEY_TYPES.get(k) == "str":  # keep strings raw: YAML would read 'off' as False
                value = v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"" else v
            elif v == "":
                value = None  # 'key=' : reported below as "expects ..., got nothing"
            else:
                try:
                    value = yaml.safe_load(v)
                except yaml.YAMLError as e:
                    first = getattr(e, "problem", None) or str(e).strip().split("\n")[0] or type(e).__name__
                    hint = f" Example: {k}={_example(k)}" if k in _KEY_TYPES else ""
                    raise ConfigError(f"cannot read the value of '{k}' in '{item}': {first} "
                                      f"(values are read as YAML: lists as [a,b], quote strings "
                                      f"that contain ':' or '#').{hint}") from None
            pairs.append((k, value))
    nested: dict = {}
    keys = set(valid_keys())
    for k, v in pairs:
        if k in _groups():
            raise _group_error(k)
        if k not in keys:
            raise ConfigError(f"unknown config key '{k}'.{_closest(k)}")
        _check_value(k, v, "the overrides")
        cur = nested
        parts = k.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    return nested


def method_defaults(name: str) -> dict:
    """The method's own defaults (``methods/<name>.yaml``; {} when it has none), e.g. the
    baselines' ``model: {adapters: false}``."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        return {}  # not a method name (validate() reports it)
    res = resources.files("mmcl.methods") / f"{name}.yaml"
    if not res.is_file():
        return {}
    where = f"method defaults {name}.yaml"
    try:
        data = yaml.safe_load(res.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a YAML mapping of config keys")
    _check_keys(data, where, check_values=True)
    return data


def build_config(preset: str | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults <- method defaults <- preset <- overrides, type-checked. The method's name is
    resolved first (overrides, else preset, else the default) so that its YAML can sit
    between the built-in defaults and the preset. Returns a plain Config dataclass."""
    base = OmegaConf.structured(Config)
    preset_layer = load_preset(preset) if preset else {}
    override_layer = parse_overrides(overrides)
    name = (override_layer.get("method", {}).get("name") or preset_layer.get("method", {}).get("name")
            or MethodConfig.name)
    layers = [base, OmegaConf.create(method_defaults(str(name)))]
    if preset:
        layers.append(OmegaConf.create(preset_layer))
    layers.append(OmegaConf.create(override_layer))
    try:
        merged = OmegaConf.merge(*layers)
    except (ValidationError, ConfigKeyError, OmegaConfBaseException) as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(getattr(e, "msg", e)).strip().splitlines()[0]
        hint = f" Example: {key}={_example(key)}" if key in _KEY_TYPES else ""
        raise ConfigError(f"invalid value for config key '{key}': {msg}.{hint}") from None
    if preset:
        merged.preset = Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset
    cfg: Config = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg


_CHOICES = {
    "scenario.kind": ("class", "domain"),
    "scenario.class_order": ("seed", "given"),
    "adapter.expert": ("cross_attention", "channel_token_map"),
    "adapter.route": ("sample",),
    "freeze.normalize": ("slots",),
    "loss.align_kind": ("joint_infonce", "joint_cosine", "pairwise_infonce"),
    "memory.selection": ("herding", "random"),
    "train.schedule": ("cosine", "constant"),
    "train.precision": ("fp32", "bf16"),
    "model.pool": ("mean",),
    "run.progress": ("auto", "always", "never"),
    "data.on_missing": ("fail", "skip"),
    "data.multi_label": ("drop", "first"),
}


def get_key(cfg, key: str):
    cur = cfg
    for p in key.split("."):
        cur = getattr(cur, p)
    return cur


# key -> smallest allowed value (inclusive)
_MINIMUM = {
    "run.threads": 0, "data.image_size": 8, "data.max_text_tokens": 2, "data.sample_rate": 1000,
    "data.max_stamps_per_class": 0, "data.video_frames": 1, "data.sensor_length": 1, "data.sensor_window": 1, "model.blocks": 1, "model.length_chunks": 1, "model.dim_z": 1, "model.head_hidden": 1,
    "adapter.num_experts": 1, "adapter.dim": 1, "adapter.context_tokens": 1, "memory.size": 0,
    "memory.batch_size": 1, "train.epochs": 1, "train.batch_size": 1, "train.weight_decay": 0.0,
    "train.grad_clip": 0.0, "eval.batch_size": 1, "scenario.num_tasks": 1, "method.lwf_alpha": 0.0,
    "method.ewc_lambda": 0.0, "method.ewc_gamma": 0.0, "method.derpp_alpha": 0.0, "method.derpp_beta": 0.0,
    "method.prompt_pull": 0.0, "method.l2p_pool": 1, "method.l2p_length": 1, "method.l2p_top_k": 1,
    "method.dualprompt_g_length": 1, "method.dualprompt_e_length": 1, "method.dualprompt_g_blocks": 0,
    "method.coda_components": 1, "method.coda_length": 1, "method.coda_ortho": 0.0,
}
_MINIMUM.update({f"encoders.{m}.{k}": 1 for m in MODALITY_TYPES for k in ("width", "layers", "fit_epochs")})
_CHOICES.update({f"encoders.{m}.fit": ("none", "first_task") for m in MODALITY_TYPES})
_MINIMUM["encoders.text.width"] = 2
# key -> value it must exceed
_ABOVE = {"train.lr": 0.0, "data.max_speech_seconds": 0.0, "loss.distil_T": 0.0, "loss.align_tau": 0.0,
          "loss.preserve_tau": 0.0, "method.lwf_T": 0.0}


def _did_you_mean(value: str, choices) -> str:
    near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{near[0]}'?" if near else ""


def _check_names(key: str, values: list, known=None) -> None:
    if not values:
        raise ConfigError(f"config key '{key}' is empty: give at least one, e.g. {key}={_example(key)}")
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"config key '{key}' lists '{v}' twice: {list(values)}")
        seen.add(v)
        if known is not None and v not in known:
            raise ConfigError(f"config key '{key}': unknown value '{v}'.{_did_you_mean(v, known)} "
                              f"Known: {', '.join(known)}")


def _check_registered(cfg: Config) -> None:
    """Names that must be registered (method, data set, encoders): fail before any data work."""
    from mmcl import registry
    registry.load_all()
    checks = [("method.name", "method", cfg.method.name), ("data.dataset", "dataset", cfg.data.dataset)]
    checks += [(f"encoders.{m}.kind", "encoder", getattr(cfg.encoders, m).kind) for m in cfg.data.modalities]
    for key, kind, name in checks:
        table = registry.REGISTRIES[kind]
        if name not in table:
            raise ConfigError(f"config key {key}='{name}' is not a registered {kind}."
                              f"{_did_you_mean(name, table)} Known: {', '.join(sorted(table))} "
                              f"(`mmcl list` describes them)")
        if kind == "encoder" and getattr(cfg.encoders, key.split(".")[1]).fit != "none" \
                and not getattr(table[name], "fittable", False):
            raise ConfigError(f"config key encoders.{key.split('.')[1]}.fit: encoder '{name}' cannot be fitted "
                              "(pre-trained encoders stay frozen; only imu encoders can be trained on task 1)")
        takes, slot = getattr(table[name], "modality", None), key.split(".")[1]
        if kind == "encoder" and takes and takes != MODALITY_TYPES[slot]:
            fits = sorted(n for n, c in table.items() if getattr(c, "modality", None) == MODALITY_TYPES[slot])
            raise ConfigError(f"config key {key}='{name}': encoder '{name}' takes {takes} input, and "
                              f"modality '{slot}' is {MODALITY_TYPES[slot]}. Use one of: {', '.join(fits)}")


def validate(cfg: Config) -> None:
    for key, choices in _CHOICES.items():
        v = get_key(cfg, key)
        if v not in choices:
            raise ConfigError(f"config key '{key}' = {v!r} is not one of {', '.join(choices)}."
                              f"{_did_you_mean(v, choices)}")
    for key, low in _MINIMUM.items():
        v = get_key(cfg, key)
        if v < low:
            raise ConfigError(f"config key '{key}' must be at least {low}, got {v}")
    for key, low in _ABOVE.items():
        v = get_key(cfg, key)
        if not v > low:
            raise ConfigError(f"config key '{key}' must be greater than {low}, got {v}")
    _check_names("data.modalities", cfg.data.modalities, tuple(MODALITY_TYPES))
    if cfg.data.dataset == "tuxpaint":  # a manifest takes its classes / domains from its rows
        _check_names("data.classes", cfg.data.classes)
        _check_names("data.languages", cfg.data.languages)
    if not 0.0 <= cfg.freeze.threshold <= 1.0:
        raise ConfigError(f"config key 'freeze.threshold' is a share of routings between 0 and 1, "
                          f"got {cfg.freeze.threshold}")
    if not 1 <= cfg.adapter.top_k <= cfg.adapter.num_experts:
        raise ConfigError(f"adapter.top_k={cfg.adapter.top_k} must be between 1 and adapter.num_experts={cfg.adapter.num_experts}")
    if len(cfg.data.split) != 3 or abs(sum(cfg.data.split) - 1) > 1e-6 or min(cfg.data.split) < 0:
        raise ConfigError(f"data.split={cfg.data.split} must be three non-negative fractions summing to 1")
    _check_registered(cfg)


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def from_dict(d: dict) -> Config:
    _check_keys(d, "saved config")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(d)))
