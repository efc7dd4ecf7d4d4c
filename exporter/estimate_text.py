"""How a device estimate is made, in words: written into every estimate and above the estimates in
report.md. A foundation of its own so the report (a record) does not import the estimating stage."""

METHOD = (
    "estimate: roofline (compute, DRAM) scaled by host efficiency + per-op energy (see exporter/bench/estimate.py); "
    "unvalidated: no published timings of this device are fitted, so no error band"
)
METHOD_FITTED = (
    "estimate: per-operator-class linear model (dense MACs, activation elements moved, per-inference overhead) "
    "fitted on Qualcomm AI Hub's published latencies of this device, leave-one-model-out validated "
    "(see exporter/bench/device_fit.py, benchmarks/ESTIMATES.md) + per-op energy"
)
METHOD_ON_DEVICE = (
    "estimate: per-op energy (profile constants) + static power x the latency measured on the device "
    "(see exporter/bench/estimate.py)"
)
FORMULA = (
    "latency = the fitted device model where the profile has one (sum of seconds per unit x work per operator "
    "class), else max(MACs / compute_gmacs, bytes / dram_gbps) / host efficiency (or as measured on the device); "
    "energy = MACs x pj_per_mac + bytes x pj_per_dram_byte + static_power_w x latency; "
    "power(rate) = static_power_w + (MACs x pj_per_mac + bytes x pj_per_dram_byte) x rate"
)
