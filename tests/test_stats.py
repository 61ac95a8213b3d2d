"""Statistics against scipy and hand-computed values on fixed arrays; figures are written."""
import os
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ctxlookup.stats import ablation_comparison, figure5, figure6, rising_comparison, score_statistics, subset_counts


def test_score_statistics_against_scipy():
    s = np.array([0.5, 0.6, 0.9, 0.75, 0.55, 1.0, 0.95, 0.7, np.nan, 0.65])
    b = np.array([0.5, 0.45, 0.55, 0.5, 0.6, 0.5])
    r = score_statistics(s, b).iloc[0]
    v = s[~np.isnan(s)]
    assert r.n_heads == 9 and r["mean"] == pytest.approx(v.mean()) and r["std"] == pytest.approx(v.std(ddof=1))
    assert r["skew"] == pytest.approx(stats.skew(v))
    t = stats.skewtest(v, alternative="greater")
    assert r.skewtest_z == pytest.approx(t.statistic) and r.skewtest_p == pytest.approx(t.pvalue)
    k = stats.ks_2samp(v, b)
    assert r.ks_D == pytest.approx(k.statistic) and r.ks_p == pytest.approx(k.pvalue)
    small = score_statistics([0.5, 0.7]).iloc[0]  # too few for skew / skewtest; no baseline
    assert small.n_heads == 2 and np.isnan(small["skew"]) and np.isnan(small.skewtest_p) and np.isnan(small.ks_D)
    empty = score_statistics([np.nan]).iloc[0]
    assert empty.n_heads == 0 and np.isnan(empty["mean"])


def test_subset_counts_table4():
    prompts = pd.DataFrame(dict(prompt_id=[0, 1, 2, 3], subset=["code", "code", "email", "bible"]))
    att = pd.DataFrame([dict(layer=1, neuron=2, prompt_id=p, head_layer=0, head=h, active=a)
                        for p, h, a in [(0, 0, True), (1, 0, True), (2, 0, False), (3, 0, True),
                                        (0, 1, True), (1, 1, True), (2, 1, False), (3, 1, False)]])
    heads = pd.DataFrame([dict(layer=1, neuron=2, head_layer=0, head=0), dict(layer=1, neuron=2, head_layer=0, head=1)])
    t = subset_counts(prompts, att, heads)
    assert t.n_subsets.tolist() == [2, 1] and t.subsets.iloc[0] == ["bible", "code"]
    assert t.attrs["histogram"].to_dict() == {1: 1, 2: 1}
    assert subset_counts(prompts, att, heads, which="all").n_subsets.tolist() == [3, 3]


def test_ablation_comparison_and_ks():
    rows = []
    for h in range(4):
        for p in range(4):
            rows.append(dict(layer=1, neuron=0, head_layer=0, head=h, prompt_id=p, active=p < 2,
                             decrease=(0.3 + 0.05 * h) if p < 2 else 0.01 * h))
    c = ablation_comparison(pd.DataFrame(rows))
    np.testing.assert_allclose(c.mean_decrease_active, [0.3, 0.35, 0.4, 0.45])
    np.testing.assert_allclose(c.mean_decrease_inactive, [0.0, 0.01, 0.02, 0.03])
    k = stats.ks_2samp([0.3, 0.35, 0.4, 0.45], [0.0, 0.01, 0.02, 0.03])
    assert c.attrs["ks"]["D"] == pytest.approx(k.statistic) and c.attrs["ks"]["p"] == pytest.approx(k.pvalue)
    with pytest.raises(ValueError, match="active"):
        ablation_comparison(pd.DataFrame(rows).assign(active=None))


def test_rising_comparison_against_the_hypergeometric_tail():
    """Fisher's one-sided p by hand: the probability, with the margins fixed, of the next-token
    group having at least as many rising neurons (a hypergeometric tail summed with math.comb)."""
    from math import comb

    ev = pd.DataFrame(dict(group=["next_token"] * 12 + ["random"] * 10 + ["other"] * 3,
                           rising=[True] * 7 + [False] * 5 + [True] * 2 + [False] * 8 + [True] * 3))
    r = rising_comparison(ev)
    n, k, total = 12, 7 + 2, 12 + 10
    want = sum(comb(total - n, k - x) * comb(n, x) for x in range(7, min(n, k) + 1)) / comb(total, k)
    assert (r["rising"], r["neurons"], r["baseline_rising"], r["baseline_neurons"]) == (7, 12, 2, 10)
    assert r["p"] == pytest.approx(want, rel=1e-12) and r["odds_ratio"] == pytest.approx((7 * 8) / (5 * 2))
    none = rising_comparison(ev[ev.group != "random"])
    assert none["baseline_neurons"] == 0 and np.isnan(none["p"]) and np.isnan(none["odds_ratio"])
    with pytest.raises(ValueError, match="rising"):
        rising_comparison(ev.drop(columns="rising"))


def test_figures_are_written(tmp_path):
    p5 = figure5([0.5, 0.7, 0.9], [0.5, 0.55], path_base=str(tmp_path / "fig5"))
    c = ablation_comparison(pd.DataFrame([dict(layer=1, neuron=0, head_layer=0, head=0, prompt_id=0, active=True, decrease=0.2),
                                          dict(layer=1, neuron=0, head_layer=0, head=0, prompt_id=1, active=False, decrease=0.0)]))
    p6 = figure6(c, path_base=str(tmp_path / "fig6"))
    for p in p5 + p6:
        assert (tmp_path / p.split("/")[-1]).stat().st_size > 1000


def test_ddof_and_skewtest_both_directions():
    rng = np.random.default_rng(0)
    s = rng.beta(8, 1.2, 200)  # mass on the right: negative skew, the paper's good direction
    r0, r1 = score_statistics(s, ddof=0).iloc[0], score_statistics(s).iloc[0]
    assert r0["std"] == pytest.approx(np.std(s)) and r1["std"] == pytest.approx(np.std(s, ddof=1))
    assert r0["skew"] < 0
    assert r0.skew_p_less == pytest.approx(stats.skewtest(s, alternative="less").pvalue)
    assert r0.skew_p_greater == pytest.approx(stats.skewtest(s, alternative="greater").pvalue) == r0.skewtest_p
    assert r0.skew_p_less < 0.05 < r0.skew_p_greater


def test_ablation_means_as_numpy_in_float32():
    rng = np.random.default_rng(1)
    d = rng.random(40).astype(np.float32) * 1e-2
    act = rng.random(40) < 0.4
    ab = pd.DataFrame(dict(layer=1, neuron=2, head_layer=0, head=np.repeat([0, 1], 20), decrease=d, active=act))
    c = ablation_comparison(ab)
    for h in (0, 1):
        dd, aa = d[h * 20:(h + 1) * 20], act[h * 20:(h + 1) * 20]
        assert c.mean_decrease_active.iloc[h] == np.mean(dd[aa]) and c.mean_decrease_inactive.iloc[h] == np.mean(dd[~aa])
    k = stats.ks_2samp(c.mean_decrease_active, c.mean_decrease_inactive)
    assert c.attrs["ks"]["D"] == k.statistic and c.attrs["ks"]["p"] == k.pvalue


def test_paper_style_figures(tmp_path):
    rng = np.random.default_rng(2)
    paths = figure5({"gpt2-small": rng.random(50), "gpt2-medium": rng.random(60)}, baseline=rng.random(40),
                    path_base=str(tmp_path / "f5"), style="paper")
    assert all(os.path.getsize(p) > 0 for p in paths)
    svg = open(tmp_path / "f5.svg").read()
    assert "Skewness" in svg and "KS p-value" in svg and "Mean" in svg
    comp = pd.DataFrame(dict(mean_decrease_active=rng.random(10), mean_decrease_inactive=rng.random(10)))
    comp.attrs["ks"] = {"D": 0.5, "p": 0.01}
    paths = figure6({"small": comp, "medium": comp}, path_base=str(tmp_path / "f6"), style="paper")
    assert all(os.path.getsize(p) > 0 for p in paths)
    with pytest.raises(ValueError, match="style"):
        figure5([0.5], style="fancy")
