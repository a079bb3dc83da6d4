"""Kinetics-Sounds: AV-CIL's 30-class audio-visual subset of Kinetics-400, its split (shipped in
mmcl/data/splits/kinetics_sounds.csv.gz) and class order."""
from __future__ import annotations

from mmcl.data.clips import AudioVisualList
from mmcl.registry import register_dataset

KS_CLASSES = (
    "playing drums", "bowling", "shoveling snow", "playing harmonica", "tickling", "chopping wood",
    "dribbling basketball", "laughing", "playing organ", "playing xylophone", "playing keyboard",
    "playing accordion", "ripping paper", "tapping pen", "playing piano", "playing saxophone",
    "blowing out candles", "playing trumpet", "tap dancing", "playing trombone", "singing",
    "playing bass guitar", "shuffling cards", "blowing nose", "playing guitar", "playing violin",
    "playing bagpipes", "stomping grapes", "playing clarinet", "tapping guitar")


@register_dataset("kinetics-sounds")
class KineticsSounds(AudioVisualList):
    """Kinetics-Sounds: 30 Kinetics-400 classes with sound, AV-CIL's split (19220/1947/1958); video + audio."""

    CLASSES = KS_CLASSES
    ENV = "MMCL_KINETICS_SOUNDS_ROOT"
    LAYOUT = ("videos/<ytid>.mp4 (AV-CIL's raw_data/kinetics-sounds), or Kinetics files "
              "<ytid>_<start>_<end>.mp4 in videos/ or in the root")
    SPLIT_FILE = "kinetics_sounds.csv.gz"
    VIDEO_FOLDERS = ("videos", ".")
    KINETICS_NAMES = True
