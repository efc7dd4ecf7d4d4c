"""Audio for the Silero VAD example, synthesised here so the data need no download.

16 kHz mono streams in which speech-like segments (a glottal pulse train with a wandering pitch,
shaped by three formant resonators that move every syllable, with fricative noise between
syllables) alternate with silence, room noise and non-speech noise bursts, at known places.
Each stream is cut as silero-vad's own OnnxWrapper cuts it: chunks of 512 samples, each fed
with the previous chunk's last 64 samples in front (the model's `input` is [1, 576]); the
recurrent `state` and the sample rate `sr` are not data: the recipe declares them. Labels are
1 for a chunk that is mostly speech, else 0. Seeded: the same arrays on every machine.
"""

from __future__ import annotations

import numpy as np

RATE = 16_000
CHUNK = 512
CONTEXT = 64
SEQUENCES = {"calibration": 4, "evaluation": 4}
CHUNKS = 64  # per sequence: 2.05 s of audio


def _resonator(freq: float, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """A two-pole formant filter (b, a) at `freq` Hz with `bandwidth` Hz."""
    r = np.exp(-np.pi * bandwidth / RATE)
    theta = 2 * np.pi * freq / RATE
    return np.array([1.0 - r]), np.array([1.0, -2 * r * np.cos(theta), r * r])


def _syllable(rng: np.random.Generator, n: int) -> np.ndarray:
    """One voiced syllable of n samples: pulses at a drifting pitch through three formants, faded in and out."""
    from scipy.signal import lfilter

    f0 = rng.uniform(95, 230) * (1 + 0.08 * np.sin(np.linspace(0, rng.uniform(1, 3) * np.pi, n)))
    phase = np.cumsum(f0 / RATE)
    pulses = np.diff(np.floor(phase), prepend=0.0) + 0.02 * rng.standard_normal(n)
    voice = np.zeros(n)
    for lo, hi, bw in ((300, 850, 90), (850, 2300, 120), (2300, 3200, 180)):
        b, a = _resonator(rng.uniform(lo, hi), bw)
        voice += lfilter(b, a, pulses) * rng.uniform(0.5, 1.0)
    envelope = np.sin(np.linspace(0, np.pi, n)) ** 0.6
    return voice * envelope / (np.abs(voice).max() + 1e-9)


def _fricative(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unvoiced consonant: high-passed noise with a short envelope."""
    from scipy.signal import lfilter

    noise = lfilter([1.0, -0.95], [1.0], rng.standard_normal(n))
    return 0.25 * noise * np.hanning(n) / (np.abs(noise).max() + 1e-9)


def _utterance(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.zeros(n)
    pos = 0
    while pos < n:
        length = min(n - pos, int(rng.uniform(0.12, 0.28) * RATE))
        out[pos : pos + length] += _syllable(rng, length)
        pos += length
        gap = min(n - pos, int(rng.uniform(0.01, 0.06) * RATE))
        if gap > 16 and rng.random() < 0.5:
            out[pos : pos + gap] += _fricative(rng, gap)
        pos += gap
    return out


def _burst(rng: np.random.Generator, n: int) -> np.ndarray:
    """A non-speech noise: a door knock or a fan (decaying broadband noise)."""
    decay = np.exp(-np.linspace(0, rng.uniform(3, 12), n))
    return rng.uniform(0.1, 0.4) * rng.standard_normal(n) * decay


def stream(rng: np.random.Generator, chunks: int = CHUNKS) -> tuple[np.ndarray, np.ndarray]:
    """A float32 signal of `chunks` * 512 samples in [-1, 1] and its per-sample truth (1 = speech)."""
    n = chunks * CHUNK
    signal = np.zeros(n)
    truth = np.zeros(n, dtype=np.int8)
    pos = int(rng.uniform(0.1, 0.4) * RATE)
    while pos < n:
        length = min(n - pos, int(rng.uniform(0.4, 0.9) * RATE))
        if rng.random() < 0.75:
            signal[pos : pos + length] += rng.uniform(0.2, 0.7) * _utterance(rng, length)
            truth[pos : pos + length] = 1
        else:
            signal[pos : pos + length] += _burst(rng, length)
        pos += length + int(rng.uniform(0.2, 0.6) * RATE)
    noise_level = rng.uniform(0.002, 0.02)
    signal += noise_level * rng.standard_normal(n)
    return np.clip(signal, -1, 1).astype(np.float32), truth


def chunked(signal: np.ndarray) -> np.ndarray:
    """[chunks, 576]: each 512-sample chunk with the previous 64 samples before it (zeros at the start)."""
    padded = np.concatenate([np.zeros(CONTEXT, dtype=signal.dtype), signal])
    starts = range(0, len(signal), CHUNK)
    return np.stack([padded[s : s + CONTEXT + CHUNK] for s in starts])


def sequences(split: str) -> tuple[np.ndarray, np.ndarray]:
    """[sequences, chunks, 576] inputs and [sequences, chunks] labels (1: over half the chunk is speech)."""
    rng = np.random.default_rng({"calibration": 10, "evaluation": 11}[split])
    inputs, labels = [], []
    for _ in range(SEQUENCES[split]):
        signal, truth = stream(rng)
        inputs.append(chunked(signal))
        labels.append((truth.reshape(-1, CHUNK).mean(axis=1) > 0.5).astype(np.int64))
    return np.stack(inputs), np.stack(labels)


# The recipe's data callables (no arguments): the data input `input` only; state and sr are declared.


def calibration() -> dict[str, np.ndarray]:
    x, labels = sequences("calibration")
    return {"input": x, "labels": labels}


def evaluation() -> dict[str, np.ndarray]:
    x, labels = sequences("evaluation")
    return {"input": x, "labels": labels}
