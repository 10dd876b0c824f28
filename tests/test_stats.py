"""Statistics across seeds on hand-made numbers whose answers are worked out by hand or from tables."""

import math

import pytest

from skulab.stats import (
    SIGN_FLIP,
    T_TEST,
    convergence,
    describe,
    holm,
    is_significant,
    pair_by_seed,
    paired_comparison,
    seeds_needed,
)


def test_t_interval_of_three_values():
    # mean 2, std 1, so 2 +- t(0.975, df=2) / sqrt(3) = 2 +- 4.3027 * 0.57735
    result = describe([1.0, 2.0, 3.0])
    assert result["mean"] == 2.0 and result["std"] == 1.0 and result["n"] == 3
    assert result["ci_low"] == pytest.approx(-0.48414, abs=1e-5)
    assert result["ci_high"] == pytest.approx(4.48414, abs=1e-5)


def test_one_seed_has_no_spread_and_constant_values_no_width():
    assert describe([0.7]) == {"mean": 0.7, "std": None, "n": 1, "ci_low": None, "ci_high": None}
    constant = describe([0.5, 0.5, 0.5])
    assert constant["std"] == 0.0 and constant["ci_low"] == constant["ci_high"] == 0.5


def test_paired_t_test_from_six_seeds():
    # differences 1,2,3,1,2,3: mean 2, std sqrt(4/5), t = 2 / (sqrt(0.8)/sqrt(6)) = 5.4772, df 5
    baseline = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    variant = [b + d for b, d in zip(baseline, [1, 2, 3, 1, 2, 3])]
    result = paired_comparison(variant, baseline)
    assert result["test"] == T_TEST and result["n"] == 6
    assert result["diff_mean"] == pytest.approx(2.0) and result["diff_std"] == pytest.approx(math.sqrt(0.8))
    # two-sided p of t = 5.4772, 5 df: between the tables' 0.01 (t = 4.032) and 0.002 (t = 5.893)
    assert 0.002 < result["p_value"] < 0.01
    assert result["p_value"] == pytest.approx(0.0027650, abs=1e-7)
    # CI: 2 +- t(0.975, 5) * sqrt(0.8)/sqrt(6) = 2 +- 2.5706 * 0.36515
    assert result["diff_ci_low"] == pytest.approx(1.06133, abs=1e-4)
    assert result["diff_ci_high"] == pytest.approx(2.93867, abs=1e-4)


@pytest.mark.parametrize(
    "differences, expected_p",
    [
        # 8 sign patterns of (1, 2, 3): only +++ and --- reach |mean| 2, so p = 2/8
        ([1.0, 2.0, 3.0], 0.25),
        # patterns of (1, 2, -0.5) with |sum| >= 2.5: (1, 2, +-0.5) and their negatives, so p = 4/8
        ([1.0, 2.0, -0.5], 0.5),
        # two seeds: +- patterns of (0.05, 0.07), only ++ and -- reach |mean| 0.06, so p = 2/4
        ([0.05, 0.07], 0.5),
    ],
)
def test_few_seeds_use_the_exact_sign_flip_test(differences, expected_p):
    baseline = [0.5] * len(differences)
    result = paired_comparison([b + d for b, d in zip(baseline, differences)], baseline)
    assert result["test"] == SIGN_FLIP
    assert result["p_value"] == pytest.approx(expected_p)


def test_zero_variance_differences_use_the_sign_flip_test():
    baseline = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    shifted = paired_comparison([b + 0.1 for b in baseline], baseline)  # float noise in the differences
    assert shifted["test"] == SIGN_FLIP and shifted["p_value"] == pytest.approx(2 / 2**6)
    assert shifted["diff_std"] == 0.0 and shifted["diff_ci_low"] == shifted["diff_ci_high"] == pytest.approx(0.1)
    same = paired_comparison(baseline, baseline)
    assert same["p_value"] == 1.0 and same["diff_mean"] == 0.0


def test_one_seed_has_no_test_and_mismatched_seeds_fail():
    result = paired_comparison([0.8], [0.7])
    assert result["p_value"] is None and result["diff_std"] is None and result["diff_mean"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        paired_comparison([0.8, 0.9], [0.7])


def test_pair_by_seed_keeps_the_common_seeds_in_order():
    assert pair_by_seed({2: 0.9, 0: 0.8, 5: 0.1}, {0: 0.7, 2: 0.6, 3: 0.2}) == ([0.8, 0.9], [0.7, 0.6], [0, 2])


def test_holm_by_hand():
    # sorted: d 0.005*4 = 0.02, a 0.01*3 = 0.03, c 0.03*2 = 0.06, b 0.04*1 = 0.04 -> kept monotone: 0.06
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": None})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02, "e": None})
    assert holm({"a": 0.6, "b": 0.7}) == pytest.approx({"a": 1.0, "b": 1.0})  # capped at 1
    assert [name for name, p in adjusted.items() if is_significant(p)] == ["a", "d"]


@pytest.mark.parametrize("effect_size, seeds", [(1.0, 10), (0.5, 34)])
def test_seeds_needed_matches_power_tables(effect_size, seeds):
    # G*Power, paired t-test, two-sided alpha 0.05, power 0.8: d = 1 needs 10 pairs, d = 0.5 needs 34
    assert seeds_needed(0.02 * effect_size, 0.02) == seeds
    assert seeds_needed(-0.02 * effect_size, 0.02) == seeds


def test_seeds_needed_edge_cases():
    assert seeds_needed(0.1, 0.01) == 6  # t-test power says 3, but below 6 seeds the exact test can't reach 0.05
    assert seeds_needed(0.1, 0.0) == 6
    assert seeds_needed(0.0, 0.05) is None  # nothing to resolve
    assert seeds_needed(0.1, None) is None  # one seed: std unknown
    assert seeds_needed(0.001, 0.1) is None  # d = 0.01 needs ~78,000 seeds


def test_rising_history_is_not_converged():
    # last third of 9 epochs: 0.70, 0.72, 0.74 -> slope 0.02 per epoch
    result = convergence([0.1, 0.3, 0.5, 0.6, 0.65, 0.68, 0.70, 0.72, 0.74])
    assert result["window"] == 3 and result["slope"] == pytest.approx(0.02) and result["rising"]


def test_flat_or_falling_history_is_converged():
    flat = convergence([0.1, 0.5, 0.7, 0.8, 0.801, 0.799, 0.80, 0.801, 0.80])
    assert abs(flat["slope"]) < 0.005 and not flat["rising"]
    assert not convergence([0.5, 0.9, 0.85, 0.8])["rising"]
    assert convergence([0.5, 0.52, 0.54], min_slope=0.03)["rising"] is False  # threshold is an argument
    assert convergence([0.5]) == {"slope": None, "rising": False, "window": 1, "min_slope": 0.005}
