"""Audio front end for the GE2E speaker encoder, in plain numpy / torch.

Reproduces resemblyzer's preprocessing (``resemblyzer/audio.py``: ``normalize_volume`` and
``wav_to_mel_spectrogram``, which call librosa) without librosa or webrtcvad:

- volume normalised to -30 dBFS, only ever increased;
- mel *power* spectrogram (no log: the network was trained on linear mel power), 25 ms Hann
  window (periodic, as librosa's ``get_window``), 10 ms hop, centred frames with reflect
  padding (librosa < 0.10, which the model was trained with), 40 mels on the Slaney scale with
  Slaney area normalisation, 0 Hz to Nyquist.

resemblyzer also trims long silences with webrtcvad before this; we do not (no VAD here), so
pauses longer than ~200 ms stay in the frames.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16000
WINDOW_MS = 25
HOP_MS = 10
N_MELS = 40
TARGET_DBFS = -30.0
_INT16_MAX = 2 ** 15 - 1


def normalize_volume(wav: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Scale ``wav`` up so its RMS level is ``target_dbfs``; louder waves are left alone."""
    rms = float(np.sqrt(np.mean((wav.astype(np.float64) * _INT16_MAX) ** 2))) if wav.size else 0.0
    if rms == 0.0:  # silence: no level to normalise (and log10(0) would give inf gain)
        return wav
    change_db = target_dbfs - 20.0 * np.log10(rms / _INT16_MAX)
    if change_db <= 0:
        return wav
    return (wav * (10.0 ** (change_db / 20.0))).astype(np.float32)


@lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank
    fb = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                         max_frequency=sample_rate / 2, sampling_rate=sample_rate,
                         norm="slaney", mel_scale="slaney")
    return torch.from_numpy(fb.astype(np.float32))  # (freq, mels)


def mel_power(wav: np.ndarray, sample_rate: int = SAMPLE_RATE, n_mels: int = N_MELS) -> np.ndarray:
    """Mel power spectrogram (T, n_mels) float32, T = 1 + len(wav) // hop."""
    n_fft = int(sample_rate * WINDOW_MS / 1000)
    hop = int(sample_rate * HOP_MS / 1000)
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    # reflect padding needs more samples than the half window; very short clips get zeros
    pad_mode = "reflect" if x.numel() > n_fft // 2 else "constant"
    spec = torch.stft(x, n_fft=n_fft, hop_length=hop, win_length=n_fft,
                      window=torch.hann_window(n_fft, periodic=True), center=True,
                      pad_mode=pad_mode, return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2  # (freq, T)
    return (power.T @ _mel_basis(sample_rate, n_fft, n_mels)).numpy().astype(np.float32)


def speech_features(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """GE2E input frames from a mono float32 waveform: (T, 40) float32 mel power, 10 ms frames."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"speech_features expects a mono waveform (1-D), got shape {wav.shape}")
    return mel_power(normalize_volume(wav), sample_rate)
