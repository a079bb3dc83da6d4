"""The settings schema: typed dataclasses, each field with its default, its one-line doc and its
limits (``setting(...)`` metadata). Imports nothing from mmcl, so that every part of the
library (data sets, encoders, methods) can declare its own settings with ``setting`` without
depending on how configs are built.

mmcl.config assembles the full Config: these core sections, plus one section per registered
plug-in that declares settings (``method.<name>.*``, ``data.<name>.*``,
``encoders.<slot>.<kind>.*``), then layers defaults, presets and overrides and validates.

Defaults marked [C] are our choices where the paper's text is not available
(see docs/method.md); [P] marks what the paper states.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import MISSING, dataclass, field, make_dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A user error in a configuration: names the key or value and what to do."""


def setting(doc: str, default: Any = MISSING, factory: Any = MISSING, *, minimum: Any = None,
            maximum: Any = None, above: Any = None, choices: tuple | None = None):
    """A dataclass field with its doc and limits: ``minimum`` / ``maximum`` (inclusive), ``above``
    (the value must exceed it), ``choices`` (the allowed values). mmcl.config checks them and
    lists them in the key reference."""
    meta = {"doc": doc}
    for name, value in (("minimum", minimum), ("maximum", maximum), ("above", above), ("choices", choices)):
        if value is not None:
            meta[name] = tuple(value) if name == "choices" else value
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_names(key: str, values, known=None, example: str = "[a,b]") -> None:
    """A list of names: not empty, no name twice, each one of ``known`` when given (a plug-in's
    ``check_config`` uses it for its own lists)."""
    if not values:
        raise ConfigError(f"config key '{key}' is empty: give at least one, e.g. {key}={example}")
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"config key '{key}' lists '{v}' twice: {list(values)}")
        seen.add(v)
        if known is not None and v not in known:
            near = difflib.get_close_matches(str(v), [str(c) for c in known], n=1, cutoff=0.5)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"config key '{key}': unknown value '{v}'.{hint} Known: {', '.join(known)}")


def _default_cache_dir() -> str:
    return os.environ.get("MMCL_CACHE", str(Path.home() / ".cache" / "mmcl"))


# The default data set's classes (data.classes' default; mmcl.data.tuxpaint documents them).
TUXPAINT_CLASSES = [
    "animals/mammals", "food/fruit", "animals/birds", "town/houses", "symbols/money",
    "plants/flowers", "town/roadsigns", "food/vegetables", "seasonal/christmas",
    "seasonal/halloween", "animals/insects", "symbols/music", "symbols/chess", "clothes",
    "hobbies/music", "seasonal/easter",
]


@dataclass
class RunConfig:
    name: str = setting("run folder name under run.out_dir; empty: '<preset>-<method>-s<seed>'", "")
    out_dir: str = setting("parent folder of run folders", "runs")
    seed: int = setting("seed for class order, splits, initialisation, routing noise, sampling", 0)
    device: str = setting("'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available)", "auto")
    threads: int = setting("torch CPU threads; 0 keeps torch's default", 0, minimum=0)
    progress: str = setting("progress bars: 'auto' (only on a terminal), 'always' or 'never'", "auto",
                            choices=('auto', 'always', 'never'))
    save_checkpoint: bool = setting("write the final checkpoint (safetensors + JSON) to checkpoints/", True)


# Modality slots: a modality's name (in data.modalities, encoders.<name>.*, a manifest's columns)
# -> the input type its encoder takes. [C] A fixed, documented set rather than free-form names,
# so that every encoders.<name>.* key is a documented, type-checked config key. A new slot is one
# entry here and one field in EncodersConfig.
MODALITY_TYPES = {"image": "image", "video": "video", "text": "text", "speech": "audio",
                  "audio": "audio", "accel": "sensor", "gyro": "sensor"}


@dataclass
class EncoderConfig:
    """One modality slot's encoder; an encoder kind's own settings are the slot's section
    ``encoders.<slot>.<kind>`` (e.g. ``encoders.accel.imu.fit``)."""
    kind: str = setting("registered encoder: mobilenetv2, vit (image); vit_video, videomae (video); hf_text "
                    "(text); ge2e, ast (speech, audio); imu (accel, gyro)", "")
    source: str = setting(
        "where weights come from: 'package' (weights shipped in a pip package), a local "
        "folder or file, a Hugging Face id (hf_text; read from the local Hugging Face cache, "
        "downloaded only when MMCL_DOWNLOAD=1), or 'random' (tiny random config, tests)", "package")
    width: int = setting("hidden width of the 'random' config (tests); ignored otherwise", 32, minimum=1)
    layers: int = setting("layer count of the 'random' config (tests); ignored otherwise", 3, minimum=1)
    random_weights: bool = setting(
        "a weak encoder (docs/weak_encoder.md): keep the architecture that kind and source give, replace every "
        "weight by a seeded random draw (the same in every run), frozen like any encoder", False)


@dataclass
class EncodersConfig:
    image: EncoderConfig = setting("image encoder", factory=lambda: EncoderConfig(kind="mobilenetv2"))
    text: EncoderConfig = setting("text encoder", factory=lambda: EncoderConfig(kind="hf_text"))
    speech: EncoderConfig = setting("speech encoder", factory=lambda: EncoderConfig(kind="ge2e"))
    video: EncoderConfig = setting("video encoder (frames)", factory=lambda: EncoderConfig(
        kind="vit_video", source="google/vit-base-patch16-224-in21k"))
    audio: EncoderConfig = setting("audio (sound) encoder; not fine-tuned on AudioSet by default (AVE leakage, "
                               "see docs/datasets.md)", factory=lambda: EncoderConfig(
                                   kind="ast", source="MIT/ast-finetuned-speech-commands-v2"))
    accel: EncoderConfig = setting("accelerometer encoder (no public pre-trained model: frozen random "
                               "by default)", factory=lambda: EncoderConfig(kind="imu", source="random", width=64))
    gyro: EncoderConfig = setting("gyroscope encoder (as accel)", factory=lambda: EncoderConfig(
        kind="imu", source="random", width=64))


@dataclass
class DataConfig:
    """What every data set shares; a data set's own settings are its section ``data.<name>``."""
    dataset: str = setting("registered data set: tuxpaint, manifest (your own data; `mmcl list`)", "tuxpaint")
    manifest: str = setting("manifest data set: the CSV / JSONL file, one row per sample (columns label, one per "
                        "modality, optional domain / split / group; see the README)", "")
    domains: list[str] = setting("manifest, samsemo: domains used (empty: all; manifest: in order of appearance, "
                             "samsemo: EN, DE, ES, PL, KO)", factory=list)
    on_missing: str = setting("a sample whose file is missing or cannot be decoded: 'fail' (stop, naming the file), "
                          "'skip' (leave the sample out; counted, listed in the run's data info) or 'mask' (keep "
                          "it with that modality masked; a sample left with no modality is an error)", "fail",
                          choices=('fail', 'skip', 'mask'))
    root: str = setting("data set root; empty: $MMCL_<DATASET>_ROOT (e.g. MMCL_TUXPAINT_ROOT, MMCL_AVE_ROOT), else "
                    "the folder last given to `mmcl prepare <preset> --root DIR`, else (tuxpaint only) "
                    "/usr/share/tuxpaint/stamps (docs/datasets.md)", "")
    cache_dir: str = setting("where prepared data is cached ($MMCL_CACHE)", factory=_default_cache_dir)
    modalities: list[str] = setting("modalities used, in order", factory=lambda: ["image", "text", "speech"])
    classes: list[str] = setting("class names (tuxpaint: stamp folders; manifest: empty = every label)",
                                 factory=lambda: list(TUXPAINT_CLASSES))
    split: list[float] = setting("train / val / test fractions, split by stamp with the seed",
                                 factory=lambda: [0.7, 0.1, 0.2])
    image_size: int = setting("images are resized to this square size (pixels)", 128, minimum=8)
    max_text_tokens: int = setting("text is truncated to this many tokens", 64, minimum=2)
    max_speech_seconds: float = setting("speech and audio are cut to this many seconds", 3.0, above=0.0)
    video_frames: int = setting("frames sampled per video clip, evenly spaced over the clip [C]", 8, minimum=1)
    sample_rate: int = setting("speech is resampled to this rate (Hz); GE2E expects 16000", 16000, minimum=1000)
    cache_prefix: bool = setting(
        "cache each frozen encoder's prefix (tokenizer + block 1, before the first adapter) at "
        "preparation time; exact because inputs are not augmented", True)


@dataclass
class ScenarioConfig:
    kind: str = setting("'class' (class-incremental, growing head) or 'domain' (domain-incremental, fixed head)",
                        "class",
                        choices=('class', 'domain'))
    num_tasks: int = setting("number of tasks (class: classes split evenly; domain: one domain per task)", 4, minimum=1)
    class_order: str = setting("'seed' (shuffled by run.seed) or 'given' (data.classes order)", "seed",
                               choices=('seed', 'given'))


@dataclass
class ModelConfig:
    blocks: int = setting("B: each frozen encoder's layers are split into B contiguous groups [C]", 3, minimum=1)
    dim_z: int = setting("width of per-modality and joint representations [C]", 256, minimum=1)
    head_hidden: int = setting("hidden width of the projection and fusion MLPs [C]", 256, minimum=1)
    pool: str = setting("token pooling before projection: 'mean' (over valid tokens)", "mean", choices=('mean',))
    input_norm: bool = setting("LayerNorm on the inputs of the projection and fusion MLPs [C]", True)
    missing_fusion: str = setting(
        "how z_joint is formed when a sample misses modalities: 'present_mean' (each absent modality's slot of the "
        "fusion input holds the mean of the present modalities' z_k) [C]", "present_mean",
        choices=("present_mean",))
    adapters: bool = setting("cross-modality adapters after every block; false = frozen features only", True)
    cached_features: bool = setting(
        "a model without adapters and prompts trains and evaluates from each sample's pooled frozen features, "
        "computed once per data set and encoder configuration and cached beside the prepared data (exact up "
        "to rounding); false runs the frozen blocks in every step", True)
    weight_align: bool = setting(
        "WA head correction (Zhao et al., 2020), for every method with a growing head: after each "
        "class-incremental task from task 2 on, the new classes' classifier rows are rescaled to the old "
        "rows' mean norm", False)
    length_chunks: int = setting("skip padding: a batch's rows run in up to this many groups of similar length "
                             "(by the most padded modality), and each encoder block's rows in up to this "
                             "many groups by that modality's own lengths, each group trimmed to its "
                             "longest row (exact up to rounding; 1 = everything padded to the longest "
                             "row)", 2, minimum=1)


@dataclass
class AdapterConfig:
    num_experts: int = setting("experts per block [P: 10]", 10, minimum=1)
    top_k: int = setting("experts chosen per routing [P: 2]", 2, minimum=1)
    dense: bool = setting("ablation: softmax over all experts, every expert computed (no top-k)", False)
    dim: int = setting("shared adapter width d [C]", 128, minimum=1)
    expert: str = setting("'cross_attention' or 'channel_token_map' [C]", "cross_attention",
                          choices=('cross_attention', 'channel_token_map'))
    context_tokens: int = setting("other modalities' tokens are mean-pooled to at most this many each [C]", 32,
                                  minimum=1)
    route: str = setting("routing granularity: 'sample' (per sample and modality) [C]", "sample", choices=('sample',))
    noisy_gating: bool = setting("learned Gaussian noise on gate logits in training (noisy top-k) [C]", True)
    balance_weight: float = setting("lambda_lb of cv^2(importance) + cv^2(load) [C]", 0.01)
    gate_init_std: float = setting("std of the normal initialisation of the clean gate weights (0: zeros, every "
                                   "expert equal at the start and the noise decides) [C]", 0.0, minimum=0.0)
    noise_scale: float = setting("multiplier of the learned gate-noise std (softplus(W x) + 0.01; 0.70 at a zero "
                                 "initialisation) [C]", 1.0, minimum=0.0)
    memory_noise: bool = setting("route memory rows with gate noise in training like current rows; false: memory "
                                 "rows are routed noise-free, as when their stored targets were computed [C]", True)
    lr_scale: float = setting("learning rate of the experts, gates and adapter projections as a multiple of "
                              "train.lr [C]", 1.0, above=0.0)
    warmup: float = setting("fraction of each task's steps over which the adapters' learning rate rises linearly "
                            "from 0 (0: none) [C]", 0.0, minimum=0.0, maximum=1.0)
    diagnostics: bool = setting("after each task, route the task's training rows without noise, by class: routing "
                                "tests, gate scales and the use of frozen experts in results.json and the report "
                                "(one evaluation pass per task)", True)


@dataclass
class FreezeConfig:
    enabled: bool = setting("freeze heavily used experts after each task [P]", True)
    threshold: float = setting("freeze experts whose routing share f_e exceeds this [P: 0.10]", 0.10,
                               minimum=0.0, maximum=1.0)
    normalize: str = setting("'slots': f_e = count_e / (top_k * routings), shares sum to 1 [C]", "slots",
                             choices=('slots',))
    usage: str = setting("what the shares are counted on: 'training' (every training routing of the task: noisy, "
                         "memory rows included) or 'clean' (a noise-free pass over the task's own training rows "
                         "after training) [C]; clean was chosen on validation accuracy "
                         "(benchmarks/results/cma_defaults_search.md)", "clean", choices=("training", "clean"))
    rule: str = setting("which experts freeze: 'share' (share above freeze.threshold [P]), 'relative' (share above "
                        "freeze.relative / adapter.num_experts) or 'top' (the freeze.top most used) [C]", "share",
                        choices=("share", "relative", "top"))
    scope: str = setting("what freezing keeps fixed: 'expert' (its own weights [P]) or 'expert_gate' (also its "
                         "rows of every modality's clean and noise gate weights, which only route to it, so its "
                         "routing cannot drift either) [C]", "expert", choices=("expert", "expert_gate"))
    relative: float = setting("rule=relative: freeze shares above this multiple of the uniform share 1/E [C]", 1.5,
                              minimum=0.0)
    top: int = setting("rule=top: experts frozen per block and task (the most used not yet frozen) [C]", 2,
                       minimum=0)


@dataclass
class LossConfig:
    distil: float = setting("lambda_d, weight of L_distil [C]", 1.0)
    align: float = setting("lambda_a, weight of L_align [C]", 1.0)
    preserve: float = setting("lambda_p, weight of L_preserve [C]", 1.0)
    distil_T: float = setting("distillation temperature [C]", 2.0, above=0.0)
    distil_on_current: bool = setting("also distil on the current batch (old outputs computed once at task start) [C]",
                                      False)
    align_kind: str = setting("'joint_infonce', 'joint_cosine' or 'pairwise_infonce' (the paper's ablation) [C]",
                              "joint_infonce",
                              choices=('joint_infonce', 'joint_cosine', 'pairwise_infonce'))
    cls_current: bool = setting("class-incremental recency-bias counter for replay methods (cma, er): the "
                                "current rows' cross-entropy covers the current task's classes only, the memory "
                                "rows' all seen classes (no effect in domain-incremental runs) [C]", False)
    align_negatives: str = setting("InfoNCE negatives of L_align: 'all' (every other row of the batch) or "
                                   "'other_class' (rows of the same class are not pushed apart) [C]", "all",
                                   choices=("all", "other_class"))
    align_tau: float = setting("temperature of the InfoNCE alignment [C]", 0.1, above=0.0)
    align_detach_joint: bool = setting("stop gradients through z_joint in L_align (the joint is the anchor) [C]", True)
    preserve_tau: float = setting("temperature of the pairwise-similarity distributions [C]", 0.1, above=0.0)


@dataclass
class MemoryConfig:
    size: int = setting("rehearsal memory size in samples [P: 200]", 200, minimum=0)
    selection: str = setting("'herding' (on z_joint) or 'random' [C]", "herding", choices=('herding', 'random'))
    batch_size: int = setting("memory samples drawn per training step from task 2 on [C]", 32, minimum=1)


# train.modality_dropout.<slot>: one probability per modality slot, so that a new slot gets its key
# from MODALITY_TYPES alone.
ModalityDropoutConfig = make_dataclass("ModalityDropoutConfig", [
    (slot, float, setting(f"probability that a row of a training step (current or memory) has its {slot} masked; "
                          "a row keeps at least one modality [C]", 0.0, minimum=0.0, maximum=1.0))
    for slot in MODALITY_TYPES])
ModalityDropoutConfig.__module__ = __name__
ModalityDropoutConfig.__doc__ = "Modality dropout in training: one probability per modality slot."


@dataclass
class TrainConfig:
    epochs: int = setting("epochs per task", 3, minimum=1)
    batch_size: int = setting("current-task samples per step [C]", 32, minimum=1)
    lr: float = setting("AdamW learning rate [C]", 1e-3, above=0.0)
    weight_decay: float = setting("AdamW weight decay [C]", 1e-4, minimum=0.0)
    schedule: str = setting("'cosine' within each task, or 'constant'", "cosine", choices=('cosine', 'constant'))
    precision: str = setting("'fp32' or 'bf16' (autocast)", "fp32", choices=('fp32', 'bf16'))
    grad_clip: float = setting("max gradient norm; 0 disables", 0.0, minimum=0.0)
    modality_dropout: ModalityDropoutConfig = setting(
        "modality dropout: per modality slot, the probability that a training sample's modality is masked",
        factory=lambda: ModalityDropoutConfig())


@dataclass
class EvalConfig:
    batch_size: int = setting("evaluation batch size", 128, minimum=1)
    modality_robustness: bool = setting(
        "after the last task, the accuracy on all test data with each modality masked and with each modality "
        "alone (results.json's modality_robustness, a table in the report); two passes per modality", True)


@dataclass
class LogConfig:
    tensorboard: bool = setting("write TensorBoard event files to the run folder's tb/ (loss terms and learning rate "
                                "per step, accuracies, metrics, expert usage per task; `tensorboard --logdir "
                                "RUN_DIR/tb`); costs well under 2 % of a run (docs/tracking.md)", True)
    every: int = setting("write the per-step scalars every this many training steps", 1, minimum=1)
    wandb: bool = setting("also log the same values to Weights & Biases when the wandb package is installed "
                          "(pip install 'mmcl[wandb]'); without it, a warning and nothing else", False)
    wandb_project: str = setting("W&B project name (log.wandb=true)", "mmcl")


@dataclass
class ReportConfig:
    tsne_after: list[int] = setting("after these tasks (1-based; -1 = the last) save z_joint and every z_k of the "
                                    "test samples of the tasks seen so far to representations.npz, for the t-SNE "
                                    "figure; empty: none", factory=lambda: [-1])
    tsne: bool = setting("draw the t-SNE figure (tsne.png; needs scikit-learn: pip install 'mmcl[tsne]') in the "
                         "report written at the end of a run; `mmcl report RUN_DIR --tsne` draws it any time", True)


@dataclass
class MethodConfig:
    """``method.name``; each registered method with settings adds its section ``method.<name>``
    (mmcl.config assembles them)."""
    name: str = setting("registered method ('cma': the paper's method; baselines: finetune, joint, er, lwf, ewc, "
                    "derpp, icarl, l2p, dualprompt, codaprompt, simplecil, ranpac, slca; `mmcl list`)", "cma")


@dataclass
class Config:
    preset: str = setting("preset this config started from", "")
    run: RunConfig = setting("run folder, seed, device", factory=RunConfig)
    data: DataConfig = setting("data set and preparation", factory=DataConfig)
    encoders: EncodersConfig = setting("frozen pre-trained encoders per modality", factory=EncodersConfig)
    scenario: ScenarioConfig = setting("task stream", factory=ScenarioConfig)
    model: ModelConfig = setting("MMEncoder and heads", factory=ModelConfig)
    adapter: AdapterConfig = setting("cross-modality adapter (mixture of experts)", factory=AdapterConfig)
    freeze: FreezeConfig = setting("expert freezing", factory=FreezeConfig)
    loss: LossConfig = setting("loss weights and parameters", factory=LossConfig)
    memory: MemoryConfig = setting("rehearsal memory", factory=MemoryConfig)
    train: TrainConfig = setting("optimisation", factory=TrainConfig)
    eval: EvalConfig = setting("evaluation", factory=EvalConfig)
    method: MethodConfig = setting("method", factory=MethodConfig)
    log: LogConfig = setting("experiment tracking (TensorBoard, W&B)", factory=LogConfig)
    report: ReportConfig = setting("the run's report (t-SNE of the representations)", factory=ReportConfig)
