"""Packing efficiency and speed on R1-like SFT lengths, against baselines run in the same process.

    PYTHONPATH=. .venv/bin/python bench/packing.py [--samples 100000] [--bin-size 32768]

Lengths: lognormal with median 4,096 tokens and sigma 1.0, clipped to [128, bin_size] (about 2%
of samples reach the 32K cap: the long tail of DeepSeek-R1 traces). Reported:

- FFD (``first_fit_decreasing``, segment tree): fraction of token slots filled, samples/s.
- FFD in buffers of ``--buffer`` samples (``pack_stream``, what ``data_prep/pack.py`` does).
- Baseline for speed: the same FFD with a linear (numpy-vectorized) scan over the open bins;
  it must produce the same bins.
- Baseline for efficiency: next-fit in arrival order (concatenate until the bin is full), the
  greedy packer many SFT scripts use.
Target (issue 2): at least 99% of token slots filled at bin size 32K.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from nemo_ext.data.packing import first_fit_decreasing, pack_stream, packing_efficiency


def r1_like_lengths(n: int, bin_size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(4096), 1.0, n).round(), 128, bin_size).astype(np.int64)


def ffd_linear_scan(lengths: np.ndarray, bin_size: int) -> list[list[int]]:
    """FFD that finds the first bin with room by scanning all open bins (O(n * bins))."""
    free = np.full(len(lengths), bin_size, dtype=np.int64)
    bins: list[list[int]] = []
    for i in np.argsort(-lengths, kind="stable").tolist():
        b = int(np.argmax(free[: len(bins) + 1] >= lengths[i]))
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        free[b] -= lengths[i]
    return bins


def next_fit(lengths: np.ndarray, bin_size: int) -> list[list[int]]:
    """Arrival order; start a new bin whenever the next sample does not fit the current one."""
    bins, fill = [[]], 0
    for i, n in enumerate(lengths.tolist()):
        if fill + n > bin_size:
            bins.append([])
            fill = 0
        bins[-1].append(i)
        fill += n
    return bins


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--bin-size", type=int, default=32_768)
    p.add_argument("--buffer", type=int, default=10_000, help="samples per buffer for streamed FFD")
    a = p.parse_args()
    lengths = r1_like_lengths(a.samples, a.bin_size)
    lower_bound = int(np.ceil(lengths.sum() / a.bin_size))
    capped = (lengths == a.bin_size).mean()
    print(f"{a.samples} samples, median {np.median(lengths):.0f} tokens, mean {lengths.mean():.0f}, "
          f"{capped:.1%} at the {a.bin_size} cap; lower bound {lower_bound} bins")  # fmt: skip

    ffd, t_ffd = timed(first_fit_decreasing, lengths, a.bin_size)
    scan, t_scan = timed(ffd_linear_scan, lengths, a.bin_size)
    assert scan == ffd, "the linear-scan baseline must find the same bins"
    streamed, t_stream = timed(lambda: [b for bs in pack_stream(lengths, a.bin_size, a.buffer) for b in bs])
    greedy, t_greedy = timed(next_fit, lengths, a.bin_size)

    rows = {
        "ffd (segment tree)": (ffd, t_ffd),
        f"ffd in buffers of {a.buffer}": (streamed, t_stream),
        "baseline: ffd, linear scan": (scan, t_scan),
        "baseline: next-fit, arrival order": (greedy, t_greedy),
    }
    print(f"{'method':36s} {'bins':>7s} {'filled':>8s} {'samples/s':>10s}")
    for name, (bins, seconds) in rows.items():
        eff = packing_efficiency(lengths, len(bins), a.bin_size)
        print(f"{name:36s} {len(bins):7d} {eff:8.2%} {a.samples / seconds:10.0f}")
    eff = packing_efficiency(lengths, len(ffd), a.bin_size)
    summary = {
        "ffd_efficiency": round(eff, 5),
        "ffd_bins_over_lower_bound": round(len(ffd) / lower_bound, 5),
        "ffd_samples_per_s": round(a.samples / t_ffd),
        "speedup_vs_linear_scan": round(t_scan / t_ffd, 2),
        "streamed_efficiency": round(packing_efficiency(lengths, len(streamed), a.bin_size), 5),
        "efficiency_ratio_vs_next_fit": round(eff / packing_efficiency(lengths, len(greedy), a.bin_size), 3),
    }
    print(json.dumps(summary))
    print(f"target >= 99% of token slots filled: {'met' if eff >= 0.99 else 'NOT met'}")


if __name__ == "__main__":
    main()
