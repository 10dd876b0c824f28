"""Statistics across seeds, so the report can say which differences are real.

The original study ranked schedules and optimizers on single runs and contradicted itself. Here each
variant gets a 95% t-interval over its seeds, and its difference from the baseline on the same seeds
gets a CI, a p-value (Holm-corrected across variants), the seeds that would resolve it, and each
validation curve a flag when it is still rising at the end of its budget.

Which test (decided here, reported by `paired_comparison` in `test`):

* n >= SMALL_N (6) pairs: the paired t-test (`scipy.stats.ttest_rel`).
* 2 <= n < SMALL_N: the exact sign-flip permutation test on the differences (all 2^n sign patterns,
  `scipy.stats.permutation_test`). With so few differences their normality, which the t-test rests
  on, can't be checked, while the sign-flip test only assumes they are symmetric about 0 under the
  null. Its smallest two-sided p is 2 / 2^n (0.0625 at n = 5, 0.5 at n = 2), so below 6 seeds no
  difference can be significant at alpha = 0.05: with this few seeds the honest answer is "not
  resolved", and `seeds_needed` says how many would resolve it. 6 is also where the t-test takes
  over, the first n at which the exact test could reach 0.05 (2 / 64 = 0.031).
* Differences that are all equal (zero variance): the t statistic is undefined, so the exact
  sign-flip test is used at any n (p = 2 / 2^n, or 1 when the differences are all 0).
* n = 1: no test; p is None.
"""

import math
from typing import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8
SMALL_N = 6  # below this many pairs, the exact sign-flip test replaces the paired t-test
MAX_SEEDS = 1000  # seeds_needed gives up (None) beyond this

# Convergence: a validation metric in [0, 1] still gaining more than this per epoch over the last
# third of its epochs is "not converged at this budget". 0.005 is half a point of accuracy or mAP
# per epoch: about one crop of the default val split (201 crops) per epoch, the resolution of the
# metric, and over a few more epochs it adds up to the 1-2 point gaps that separate variants.
CONVERGENCE_SLOPE = 0.005
CONVERGENCE_FRACTION = 1 / 3

T_TEST = "paired t-test"
SIGN_FLIP = "exact sign-flip permutation test"
NO_TEST = "none (n=1)"


def _as_array(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(array):
        raise ValueError("no values: statistics need at least one seed")
    if not np.isfinite(array).all():
        raise ValueError(f"non-finite value in {list(values)}")
    return array


def _is_constant(values: np.ndarray) -> bool:
    """Equal up to float noise: 0.3 - 0.2 and 0.2 - 0.1 are the same difference."""
    return bool(np.allclose(values, values[0], rtol=1e-9, atol=1e-12))


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Mean, std (ddof=1) and n of one metric over seeds, with its t-interval for the mean.

    std and the bounds are None for a single seed; constant values give a zero-width interval.
    """
    array = _as_array(values)
    n, mean = len(array), float(array.mean())
    if n < 2:
        return {"mean": mean, "std": None, "n": n, "ci_low": None, "ci_high": None}
    std = 0.0 if _is_constant(array) else float(array.std(ddof=1))
    if std == 0.0:
        return {"mean": mean, "std": 0.0, "n": n, "ci_low": mean, "ci_high": mean}
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return {"mean": mean, "std": std, "n": n, "ci_low": float(low), "ci_high": float(high)}


def _sign_flip_p(differences: np.ndarray) -> float:
    if np.allclose(differences, 0.0, rtol=0.0, atol=1e-12):
        return 1.0
    result = stats.permutation_test(
        (differences,), np.mean, permutation_type="samples", n_resamples=np.inf, vectorized=True, axis=-1
    )
    return float(result.pvalue)


def paired_comparison(variant_values: Sequence[float], baseline_values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """A variant minus the baseline, seed by seed: the mean difference, its CI, and a two-sided p.

    Both sequences must be in the same seed order (see `pair_by_seed`). The module docstring says
    which test is used when; `test` names it.
    """
    variant, baseline = _as_array(variant_values), _as_array(baseline_values)
    if len(variant) != len(baseline):
        raise ValueError(f"paired values need the same seeds: {len(variant)} variant vs {len(baseline)} baseline values")
    differences = variant - baseline
    summary = describe(differences, confidence)
    result = {
        "diff_mean": summary["mean"],
        "diff_std": summary["std"],
        "diff_ci_low": summary["ci_low"],
        "diff_ci_high": summary["ci_high"],
        "n": summary["n"],
    }
    if summary["n"] < 2:
        return result | {"p_value": None, "test": NO_TEST}
    if summary["n"] < SMALL_N or summary["std"] == 0.0:
        return result | {"p_value": _sign_flip_p(differences), "test": SIGN_FLIP}
    p_value = float(stats.ttest_rel(variant, baseline).pvalue)
    return result | {"p_value": p_value, "test": T_TEST}


def pair_by_seed(variant: dict[int, float], baseline: dict[int, float]) -> tuple[list[float], list[float], list[int]]:
    """The two metric lists over the seeds both have, in seed order, and those seeds.

    A paired test is only meaningful seed against seed; a seed only one side has is left out.
    """
    seeds = sorted(set(variant) & set(baseline))
    return [variant[s] for s in seeds], [baseline[s] for s in seeds], seeds


def holm(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment of the p-values of many variants, each against the baseline.

    It controls the chance of any false "significant" among them without assuming independence
    (scipy has only Benjamini-Hochberg, statsmodels is not a dependency). A None p (no test) stays
    None and does not count as a comparison.
    """
    tested = sorted((p, name) for name, p in p_values.items() if p is not None)
    m, running_max, adjusted = len(tested), 0.0, {}
    for rank, (p, name) in enumerate(tested):
        running_max = max(running_max, min(1.0, (m - rank) * p))
        adjusted[name] = running_max
    return {name: adjusted.get(name) for name in p_values}


def is_significant(p_value: float | None, alpha: float = ALPHA) -> bool:
    """Significant at `alpha` (pass the Holm-adjusted p); no test is never significant."""
    return p_value is not None and p_value < alpha


def _paired_t_power(effect_size: float, n: np.ndarray, alpha: float) -> np.ndarray:
    """Power of the two-sided paired t-test: the noncentral t beyond the critical values."""
    df = n - 1
    noncentrality = effect_size * np.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)


def _smallest_testable_n(alpha: float) -> int:
    """Fewest pairs at which the test `paired_comparison` runs can reach `alpha` at all."""
    n = 2
    while n < SMALL_N and 2.0 ** (1 - n) > alpha:
        n += 1
    return n


def seeds_needed(diff_mean: float, diff_std: float | None, alpha: float = ALPHA, power: float = POWER, max_seeds: int = MAX_SEEDS) -> int | None:
    """Seeds (pairs) at which a paired t-test detects a true difference of `diff_mean` with `power`.

    The effect size is |diff_mean| / diff_std from the seeds observed. The count is at least the
    fewest pairs at which `paired_comparison`'s test can reach alpha (6 at 0.05, see the module
    docstring). None when there is nothing to resolve (diff_mean 0), when the std is unknown (one
    seed), or when more than `max_seeds` would be needed. A zero std with a nonzero difference is
    an unbounded effect: the smallest testable n. Pass alpha / number_of_variants for a Holm-safe
    count.
    """
    if diff_std is None or abs(diff_mean) < 1e-12:
        return None
    smallest = _smallest_testable_n(alpha)
    if diff_std == 0:
        return smallest
    n = np.arange(smallest, max_seeds + 1, dtype=np.float64)
    reached = np.nonzero(_paired_t_power(abs(diff_mean) / diff_std, n, alpha) >= power)[0]
    return int(n[reached[0]]) if len(reached) else None


def convergence(values_per_epoch: Sequence[float], min_slope: float = CONVERGENCE_SLOPE, fraction: float = CONVERGENCE_FRACTION) -> dict:
    """Is a validation metric (higher is better) still rising at the end of its epochs?

    The slope (metric units per epoch) is a least-squares line through the last `fraction` of the
    epochs, at least 2 of them; `rising` means the slope exceeds `min_slope`, so more epochs could
    change the variant's rank. With fewer than 2 epochs there is no slope and no flag.
    """
    values = np.asarray(values_per_epoch, dtype=np.float64).reshape(-1)
    window = max(2, math.ceil(len(values) * fraction))
    if len(values) < 2:
        return {"slope": None, "rising": False, "window": len(values), "min_slope": min_slope}
    tail = values[-window:]
    slope = float(np.polyfit(np.arange(len(tail), dtype=np.float64), tail, 1)[0])
    return {"slope": slope, "rising": slope > min_slope, "window": window, "min_slope": min_slope}
