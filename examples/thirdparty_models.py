"""Where the third-party example models live: the PyPI wheels that ship them, never this repository.

`pip install 'edgex[models]'` installs rapidocr-onnxruntime (PP-OCRv4 text detector and recogniser,
PP-OCR mobile v2.0 orientation classifier) and silero-vad (Silero VAD v5). The recipes name these
functions (`model.file_from`) because a recipe cannot name a site-packages path that differs on every
machine; each returns the file exactly as the wheel ships it, unconverted.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def _wheel_file(package: str, *parts: str) -> Path:
    """The file inside an installed package; a clear error when the extra is not installed."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise FileNotFoundError(f"package '{package}' is not installed: pip install 'edgex[models]'") from None
    path = Path(str(root.joinpath(*parts)))
    if not path.is_file():
        raise FileNotFoundError(f"'{'/'.join(parts)}' is not in the installed '{package}' package")
    return path


def ocr_det() -> Path:
    """PP-OCRv4 text detector (DB head): x [N, 3, H, W], H and W multiples of 32; opset 12, Constant weights."""
    return _wheel_file("rapidocr_onnxruntime", "models", "ch_PP-OCRv4_det_infer.onnx")


def ocr_rec() -> Path:
    """PP-OCRv4 text recogniser (CTC, 6625 classes): x [N, 3, 48, W]; opset 12, Constant weights."""
    return _wheel_file("rapidocr_onnxruntime", "models", "ch_PP-OCRv4_rec_infer.onnx")


def ocr_cls() -> Path:
    """PP-OCR mobile v2.0 text-line orientation classifier (0 / 180 degrees): x [N, 3, 48, 192]; opset 11."""
    return _wheel_file("rapidocr_onnxruntime", "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")


def vad() -> Path:
    """Silero VAD v5, the file `silero_vad.load_silero_vad(onnx=True)` loads: input [N, 576], state, sr."""
    return _wheel_file("silero_vad", "data", "silero_vad.onnx")


def vad_op18() -> Path:
    """Silero VAD's opset-18 variant without nested If branches per sample rate (one If on sr remains)."""
    return _wheel_file("silero_vad", "data", "silero_vad_op18_ifless.onnx")
