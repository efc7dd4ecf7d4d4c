"""Audio for the Silero VAD example, made here so the data need no download.

16 kHz mono streams in which English sentences spoken by espeak-ng (several voices, rates and
pitches; the sentences from Python's own docs, topic-disjoint between calibration and evaluation)
alternate with silence, room noise and non-speech noise bursts, at known places. espeak-ng is a
system package: `make test` and `make demo` install it (apt-get), and its absence is an error.
Each stream is cut as silero-vad's own OnnxWrapper cuts it: chunks of 512 samples, each fed
with the previous chunk's last 64 samples in front (the model's `input` is [1, 576]); the
recurrent `state` and the sample rate `sr` are not data: the recipe declares them. Labels are
1 for a chunk that is mostly speech (from the first to the last loud sample of a sentence), else
0. Seeded, and espeak-ng is deterministic: the same arrays on every machine with its version.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

RATE = 16_000
CHUNK = 512
CONTEXT = 64
SEQUENCES = {"calibration": 4, "evaluation": 4}
CHUNKS = 128  # per sequence: 4.1 s of audio


VOICES = ("en-us", "en", "en-us+f3", "en+m3", "en-us+f2", "en+m7")


@lru_cache(maxsize=2)
def sentences(split: str) -> tuple[str, ...]:
    """Plain English sentences of 4-14 words from Python's docs; even topics calibrate, odd evaluate."""
    from pydoc_data.topics import topics

    keys = sorted(topics)[{"calibration": 0, "evaluation": 1}[split] :: 2]
    found = []
    for key in keys:
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(topics[key].split())):
            words = sentence.split()
            if 4 <= len(words) <= 14 and re.fullmatch(r"[A-Za-z ,.'-]+", sentence):
                found.append(sentence)
    return tuple(found)


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's English speech for `text` at 16 kHz, float in [-1, 1], leading/trailing silence cut."""
    import shutil
    import subprocess
    import tempfile
    import wave

    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: `make test` installs it, or run: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory(prefix="edgex-speech-") as tmp:
        path = f"{tmp}/s.wav"
        args = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", path, text]
        subprocess.run(args, check=True, capture_output=True, timeout=60)
        with wave.open(path, "rb") as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64) / 32768.0
    x = resample_poly(x, RATE, rate) if rate != RATE else x
    loud = np.flatnonzero(np.abs(x) > 0.02)
    return x[loud[0] : loud[-1] + 1] if loud.size else x[:0]


def _burst(rng: np.random.Generator, n: int) -> np.ndarray:
    """A non-speech noise: a door knock or a fan (decaying broadband noise)."""
    decay = np.exp(-np.linspace(0, rng.uniform(3, 12), n))
    return rng.uniform(0.1, 0.4) * rng.standard_normal(n) * decay


def stream(rng: np.random.Generator, split: str, chunks: int = CHUNKS) -> tuple[np.ndarray, np.ndarray]:
    """A float32 signal of `chunks` * 512 samples in [-1, 1] and its per-sample truth (1 = speech):
    espeak-ng sentences in several voices, rates and pitches, between silences and noise bursts."""
    n = chunks * CHUNK
    signal = np.zeros(n)
    truth = np.zeros(n, dtype=np.int8)
    pool = sentences(split)
    pos = int(rng.uniform(0.1, 0.4) * RATE)
    while pos < n:
        if rng.random() < 0.75:
            text = pool[int(rng.integers(len(pool)))]
            voice = VOICES[int(rng.integers(len(VOICES)))]
            speech = speak(text, voice, int(rng.integers(130, 200)), int(rng.integers(25, 75)))
            speech = speech[: n - pos] / (np.abs(speech).max() + 1e-9)
            signal[pos : pos + len(speech)] += rng.uniform(0.2, 0.7) * speech
            truth[pos : pos + len(speech)] = 1
            length = len(speech)
        else:
            length = min(n - pos, int(rng.uniform(0.3, 0.8) * RATE))
            signal[pos : pos + length] += _burst(rng, length)
        pos += length + int(rng.uniform(0.3, 0.8) * RATE)
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
        signal, truth = stream(rng, split)
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
