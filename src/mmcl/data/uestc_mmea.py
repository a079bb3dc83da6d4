"""UESTC-MMEA-CL: egocentric video + accelerometer + gyroscope, 32 daily activities, the
official list files and sensor preprocessing (Xu-Linfeng/UESTC_MMEA_CL_main)."""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmcl.data.clips import ClipDataset
from mmcl.data.errors import DataError
from mmcl.data.media import median_filter, read_numeric_table
from mmcl.encoders.weights import file_stamp
from mmcl.registry import register_dataset

UESTC_FOLDERS = (
    "1_upstairs", "2_downstairs", "3_drinking", "4_fall", "5_reading", "6_sweep_floor", "7_cut_fruits",
    "8_mop_floor", "9_writing", "10_wipe_table", "11_wash_hand", "12_standing", "13_play_phone",
    "14_type_pc", "15_eating", "16_cooking", "17_pick_up_phone", "18_drop_trush", "19_fold_clothes",
    "20_walking", "21_play_card", "22_brush_teeth", "23_wash_dish", "24_moving_sth", "25_type_phone",
    "26_chat", "27_open_close_door", "28_ride_bike", "29_sit_stand", "30_take_drop_sth", "31_shopping",
    "32_watch_TV")
# The official code's normalisation (Xu-Linfeng/UESTC_MMEA_CL_main, utils/mydata_manager.py, model.py)
IMU_SCALE = {"accel": 8192.0, "gyro": 16.4}
IMU_MEAN = {"accel": (0.0352, 0.3717, -0.7944), "gyro": (78.5445, -2.1253, -6.6940)}
IMU_STD = {"accel": (0.1836, 0.4058, 0.2219), "gyro": (352.5285, 181.1698, 286.6291)}


def decode_uestc_imu(path: str, part: str, hints=None) -> np.ndarray:
    """A UESTC-MMEA-CL sensor CSV (acc xyz, gyro xyz as raw counts per row) -> (T, 3) float32,
    as the official code prepares it: scaled to g (/8192) or deg/s (/16.4), median filter over 5
    rows; the gyroscope then has its mean removed and is integrated (cumulative trapezoid) into an
    angle; finally normalised with the official per-axis mean / std."""
    table = read_numeric_table(path, 6, hints)
    cols = slice(0, 3) if part == "accel" else slice(3, 6)
    x = median_filter(table[:, cols] / IMU_SCALE[part], 5)
    if part == "gyro":
        x = x - x.mean(axis=0, keepdims=True)
        steps = (x[1:] + x[:-1]) / 2.0
        x = np.concatenate([x[:1], x[:1] + np.cumsum(steps, axis=0)], axis=0)
    return ((x - np.asarray(IMU_MEAN[part])) / np.asarray(IMU_STD[part])).astype(np.float32)


@register_dataset("uestc-mmea")
class UESTCMMEA(ClipDataset):
    """UESTC-MMEA-CL: 32 egocentric activities, official lists (4553/653/1316); video + accelerometer + gyroscope."""

    modalities = ("video", "accel", "gyro")
    CLASSES = tuple(f.split("_", 1)[1] for f in UESTC_FOLDERS)
    ENV = "MMCL_UESTC_MMEA_ROOT"
    LAYOUT = ("mydataset_{train,val,test}.txt (or train/val/test.txt), video/<N_class>/<clip>.mp4 "
              "or <clip>/ frame folders, sensor/<N_class>/<clip>.csv")
    SPLITS = (("train", "train"), ("val", "val"), ("test", "test"))

    def list_files(self) -> list[tuple[str, Path]]:
        out = []
        for split, name in self.SPLITS:
            for cand in (self.root / f"mydataset_{name}.txt", self.root / f"{name}.txt"):
                if cand.is_file():
                    out.append((split, cand))
                    break
            else:
                raise DataError(f"uestc-mmea: no {split} list under {self.root} (looked for "
                                f"mydataset_{name}.txt and {name}.txt; expected {self.LAYOUT})")
        return out

    def list_stamps(self) -> list[str]:
        return [file_stamp(p) for _, p in self.list_files()]

    def items(self) -> list[dict]:
        out = []
        for split, path in self.list_files():
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    clip_path, label = parts[0], int(parts[-1])
                except (IndexError, ValueError):
                    raise DataError(f"{path}, line {n}: expected '<clip path> <frames> <imu rows> <label>', "
                                    f"got {line.strip()[:80]!r}") from None
                if not 0 <= label < len(UESTC_FOLDERS):
                    raise DataError(f"{path}, line {n}: label {label} is outside the 32 classes (0-31)")
                folder = UESTC_FOLDERS[label]
                clip = clip_path.replace("\\", "/").rstrip("/").split("/")[-1]
                item = f"{folder}/{clip}"
                name = self.CLASSES[label]
                if name not in self.classes:
                    continue
                files = {}
                if "video" in self.data.modalities:
                    files["video"] = self.existing(
                        [self.root / "video" / folder / f"{clip}.mp4", self.root / "video" / folder / clip,
                         self.root / "data" / folder / clip], "video", item)
                if {"accel", "gyro"} & set(self.data.modalities):
                    imu = self.existing([self.root / "sensor" / folder / f"{clip}.csv",
                                         self.root / "gyro" / folder / f"{clip}.csv"], "sensor file", item)
                    files["accel"] = files["gyro"] = imu
                out.append({"id": item, "label": name, "split": split, "domain": "all", "files": files})
        return out

    def sensor_decoder(self, modality: str) -> Callable:
        return functools.partial(decode_uestc_imu, part=modality, hints=self.hints())
