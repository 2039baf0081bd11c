"""Bootstrap intervals: coverage of a known mean, shared resamples, and the refusals (too few prompts,
values or statistics that are not finite)."""

import math

import pytest
import torch

from circuit.stats import (
    NonFiniteError,
    TooFewPromptsError,
    bootstrap_ci,
    bootstrap_resamples,
)


def test_the_interval_of_a_mean_brackets_it_and_narrows_with_more_prompts():
    torch.manual_seed(0)
    few, many = torch.randn(10) + 3, torch.randn(1000) + 3
    small, large = bootstrap_ci(few), bootstrap_ci(many)
    for interval, values in ((small, few), (large, many)):
        assert float(interval.low) < float(values.mean()) < float(interval.high)
    assert float(large.high - large.low) < float(small.high - small.low)
    assert float(large.low) < 3 < float(large.high)


def test_every_cell_gets_its_own_interval_from_the_same_resamples():
    values = torch.stack([torch.arange(8.0), 2 * torch.arange(8.0)])
    interval = bootstrap_ci(values)
    assert interval.estimate.shape == (2,)
    assert float(interval.low[1]) == pytest.approx(2 * float(interval.low[0]))


def test_resamples_are_seeded():
    values = torch.arange(6.0)
    assert torch.equal(bootstrap_resamples(values, 5, seed=3), bootstrap_resamples(values, 5, seed=3))
    assert not torch.equal(bootstrap_resamples(values, 50, seed=3), bootstrap_resamples(values, 50, seed=4))


def test_one_value_is_not_a_zero_width_interval():
    with pytest.raises(TooFewPromptsError, match=r"^Cannot bootstrap over 1 prompt\(s\): an interval needs at least 2 "
                                                 r"distinct prompts .*zero width"):
        bootstrap_ci(torch.tensor([1.5]))
    with pytest.raises(TooFewPromptsError, match="over 0 prompt"):
        bootstrap_ci(torch.zeros(3, 0))


def test_fewer_prompts_than_the_minimum_are_refused_with_the_minimum():
    values = torch.arange(4.0)
    with pytest.raises(TooFewPromptsError, match=r"over 4 prompt\(s\): an interval needs at least 5 .*min_size"):
        bootstrap_ci(values, min_prompts=5)
    assert float(bootstrap_ci(torch.arange(5.0), min_prompts=5).estimate) == 2.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_values_that_are_not_finite_are_refused_with_where(bad):
    values = torch.ones(2, 6)
    values[1, 4] = bad
    kind = "1 NaN and 0 infinite" if math.isnan(bad) else "0 NaN and 1 infinite"
    with pytest.raises(NonFiniteError, match=rf"^Values to bootstrap over 6 prompts are not finite: {kind} of 12 "
                                             rf"\(shape \(2, 6\), first at index \(1, 4\)\)"):
        bootstrap_ci(values)


def test_a_statistic_that_is_not_finite_is_refused():
    values = torch.tensor([1.0, -1.0, 2.0, -2.0, 0.0, 0.0])
    with pytest.raises(NonFiniteError, match="^The statistic of the values is not finite"):
        bootstrap_ci(values, statistic=lambda x: 1 / x.mean(-1))  # the mean is 0
    with pytest.raises(NonFiniteError, match="^The statistic of the 500 bootstrap resamples is not finite"):
        bootstrap_ci(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]), n_resamples=500,
                     statistic=lambda x: 1 / x.sum(-1))  # resamples without the 1 sum to 0


def test_level_and_resamples_are_checked():
    with pytest.raises(ValueError, match="level=1.5 must be between 0 and 1"):
        bootstrap_ci(torch.arange(6.0), level=1.5)
    with pytest.raises(ValueError, match="n_resamples=0"):
        bootstrap_ci(torch.arange(6.0), n_resamples=0)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 1001])
def test_the_quantiles_are_torch_quantile_from_two_order_statistics(n):
    from circuit.stats import _quantile

    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    for q in (0.0, 0.001, 0.025, 0.3, 0.5, 0.975, 0.999, 1.0):
        assert torch.equal(_quantile(x, q), torch.quantile(x, q, dim=0)), (n, q)


def test_the_mean_of_resamples_is_the_mean_of_bootstrap_resamples():
    from circuit.stats import _resampled_means

    values = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = bootstrap_resamples(values, 500, seed=4).mean(-1)
    torch.testing.assert_close(_resampled_means(values, 500, seed=4), expected, rtol=0, atol=1e-12)
