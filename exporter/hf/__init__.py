"""Hugging Face models (the `hf` extra): local folders exported through optimum, fully offline."""

import os

# No hub access at run time, ever: a missing file must be an error, not a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
