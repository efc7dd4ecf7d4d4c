"""Quantization beyond the plain static pass: calibration limits, the accuracy-aware search, the
speed guard, weight-only INT4, FP16, dynamic INT8 and the diagnosis of slow or inaccurate models."""
