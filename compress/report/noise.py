"""Deltas within the benchmark's noise: the baseline's card (compress.shipped) gives the spread of every metric
over fine-tuning seeds; a metric delta smaller than NOISE_K standard deviations is marked, not coloured."""
from __future__ import annotations

from compress.shipped import noise_band

NOISE_K = 2.0  # a delta counts only beyond two standard deviations of the seed-to-seed spread


def mark_noise(delta: dict, band: dict | None) -> None:
    """Set `within_noise` (and `better` None) on every metric delta below NOISE_K sd of the band."""
    sd = (band or {}).get("sd") or {}
    for ds, keys in (delta.get("metrics") or {}).items():
        for key, d in keys.items():
            spread = (sd.get(ds) or {}).get(key)
            if isinstance(d, dict) and "abs" in d and spread is not None and abs(d["abs"]) < NOISE_K * spread:
                d["within_noise"] = True
                d["better"] = None


def band_of(baseline: str | None) -> dict | None:
    """The noise band of a baseline checkpoint (its card's `noise`), or None."""
    return noise_band(baseline) if baseline else None


def noise_reason(band: dict) -> str:
    return (f"within the noise: below {NOISE_K:g} sd of the metric over {band.get('n', '?')} fine-tuning seeds "
            f"({band.get('stage', '?')}, from the baseline's card)")
