"""Ablation (:func:`moakit.analysis.ablation_summary`, the statistics behind ``ablate``) on
simulated binary scores whose truth is known.

The model: item i has a success probability p_i ~ Uniform(0.1, 0.8) under the baseline. A
variant v scores 1[U_iv < p_i + delta_v]; U_iv is the baseline's own uniform U_i0 with
probability 1/2 (the variant read the same proposals and wrote the same answer) and a fresh
one otherwise, so variants are strongly paired, as they are when they share proposals. Each
repeat draws fresh proposals (fresh uniforms).

Truth: delta_v, the mean paired difference variant - baseline over the population of items,
which here is delta_v for every item (0 for the null variants, +0.10 for the one that helps);
a variant's mean score is E[p_i] + delta_v = 0.45 + delta_v.
"""

from __future__ import annotations

from .core import Case, Outcome

P_LOW, P_HIGH, SHARED = 0.1, 0.8, 0.5


def _items(rng, deltas, items, repeats):
    import numpy as np
    import pandas as pd

    p = rng.uniform(P_LOW, P_HIGH, items)
    frames = []
    for r in range(repeats):
        u0 = rng.random(items)
        for k, d in enumerate([0.0, *deltas]):
            u = u0 if k == 0 else np.where(rng.random(items) < SHARED, u0, rng.random(items))
            frames.append(pd.DataFrame({"variant": "base" if k == 0 else f"v{k}", "repeat": r,
                                        "item": np.arange(items), "score": (u < p + d).astype(float)}))
    return pd.concat(frames, ignore_index=True)


def case(deltas, items: int = 40, repeats: int = 1):
    def run(rng):
        import numpy as np

        from moakit.analysis import ablation_summary

        s = ablation_summary(_items(rng, deltas, items, repeats), n_boot=500, seed=int(rng.integers(2 ** 31)))
        rows = s[s["variant"] != "base"].reset_index(drop=True)
        truth = np.asarray(deltas, dtype=float)
        cover = (rows["delta_ci_low"] <= truth) & (truth <= rows["delta_ci_high"])
        excludes = (rows["delta_ci_low"] > 0) | (rows["delta_ci_high"] < 0)
        disagree = int((excludes != (rows["p_value"] < 0.05)).sum())
        null = truth == 0
        o = Outcome()
        o.rejected["any null variant, Holm p < 0.05 (family-wise)"] = bool((rows["p_holm"][null] < 0.05).any())
        o.rejected["null variant v1, unadjusted p < 0.05"] = bool(rows["p_value"][0] < 0.05)
        for k in np.flatnonzero(~null):
            o.rejected[f"{rows['variant'][k]} (+{truth[k]:.2f}), Holm p < 0.05"] = bool(rows["p_holm"][k] < 0.05)
            o.covered[f"delta interval, {rows['variant'][k]} (+{truth[k]:.2f})"] = bool(cover[k])
        o.covered["delta interval, null variant v1"] = bool(cover[0])
        base = s[s["variant"] == "base"].iloc[0]
        o.covered["score interval, baseline"] = bool(base["ci_low"] <= (P_LOW + P_HIGH) / 2 <= base["ci_high"])
        o.covered["interval and p agree in every row"] = disagree == 0
        o.extra["rows where interval and p disagree"] = disagree
        # the intervals are 95% each, not simultaneous: their share, not "all at once", is what to read
        o.extra["null delta intervals covering 0 (share)"] = float(cover[null].mean())
        return o

    return run


NULLS = ("any null variant, Holm p < 0.05 (family-wise)", "null variant v1, unadjusted p < 0.05")

CASES = [
    Case("ablation", "four null variants and one +0.10",
         "40 binary items, baseline + 4 variants with delta 0 + 1 with delta +0.10, one repeat; "
         "half the runs of a variant repeat the baseline's answer (shared proposals)",
         case([0.0, 0.0, 0.0, 0.0, 0.10]), null=NULLS, datasets=300),
    Case("ablation", "three repeats",
         "the same with 3 repeats per item (fresh proposals per repeat; a prompt's value is its mean over repeats)",
         case([0.0, 0.0, 0.0, 0.0, 0.10], repeats=3), null=NULLS, datasets=300),
]
