"""AVE (Audio-Visual Event; 10-s YouTube clips from AudioSet): 28 classes, AV-CIL's
class-incremental split (shipped in mmcl/data/splits/ave.csv) and class order."""
from __future__ import annotations

from mmcl.data.clips import AudioVisualList
from mmcl.registry import register_dataset

AVE_CLASSES = (
    "Acoustic guitar", "Cat", "Fixed-wing aircraft, airplane", "Frying (food)", "Ukulele", "Helicopter",
    "Mandolin", "Bus", "Train horn", "Male speech, man speaking", "Clock", "Race car, auto racing",
    "Toilet flush", "Female speech, woman speaking", "Violin, fiddle", "Chainsaw", "Flute", "Church bell",
    "Motorcycle", "Banjo", "Rodents, rats, mice", "Truck", "Bark", "Baby cry, infant cry", "Horse",
    "Accordion", "Shofar", "Goat")


@register_dataset("ave")
class AVE(AudioVisualList):
    """AVE: 28 audio-visual event classes, 10-s YouTube clips, AV-CIL's split (3294/391/394); video + audio."""

    CLASSES = AVE_CLASSES
    ENV = "MMCL_AVE_ROOT"
    LAYOUT = "AVE/<VideoID>.mp4 (the AVE_Dataset folder of the release; or the videos directly)"
    SPLIT_FILE = "ave.csv"
    VIDEO_FOLDERS = ("AVE", ".", "videos")
