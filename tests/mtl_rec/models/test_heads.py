"""Task heads: entire-space composition against exact references, and task-list validation."""

import itertools
import math

import mpmath
import pytest
import torch

from mtl_rec.config import ConfigError
from mtl_rec.config.model import TaskConfig, parse_tasks, task_order, validate_tasks
from mtl_rec.models import TaskHeads, entire_space, log1mexp

mpmath.mp.dps = 60  # the reference: exact to far beyond float64
CHAIN = {"click": None, "cart": "click", "conversion": "cart"}
EXTREMES = (-30.0, -5.0, 0.0, 5.0, 30.0)


def exact_log_p_and_log_1mp(chain_logits):
    """log p and log(1 - p) of p = prod_i sigmoid(l_i), in 60-digit arithmetic."""
    p = mpmath.mpf(1)
    for logit in chain_logits:
        p *= 1 / (1 + mpmath.exp(-mpmath.mpf(logit)))
    return float(mpmath.log(p)), float(mpmath.log(1 - p))


def chain_grid(dtype):
    """Every combination of EXTREMES over the 3-level chain: {task: [125]} logits."""
    grid = torch.tensor(list(itertools.product(EXTREMES, repeat=3)), dtype=dtype)  # [125, 3]
    return {task: grid[:, i].clone().requires_grad_() for i, task in enumerate(CHAIN)}


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_entire_space_matches_exact_reference_at_extreme_logits(dtype, rtol):
    logits = chain_grid(dtype)
    log_p, log_1mp = entire_space(logits, CHAIN)
    for depth, task in enumerate(CHAIN, start=1):
        rows = [[float(logits[t][i].detach()) for t in list(CHAIN)[:depth]] for i in range(125)]
        expected = torch.tensor([exact_log_p_and_log_1mp(r) for r in rows], dtype=torch.float64)
        torch.testing.assert_close(log_p[task].double(), expected[:, 0], rtol=rtol, atol=0)
        torch.testing.assert_close(log_1mp[task].double(), expected[:, 1], rtol=rtol, atol=0)
    loss = sum(lp.sum() + l1.sum() for lp, l1 in zip(log_p.values(), log_1mp.values(), strict=True))
    loss.backward()
    for task, logit in logits.items():
        assert torch.isfinite(logit.grad).all(), task


def test_entire_space_stays_finite_far_beyond_float_range():
    # sigmoid(200) rounds to exactly 1 in float32: 1 - p by subtraction (or log1mexp of log_p) would be
    # log(0); the logaddexp form stays finite, with finite gradients.
    logits = {task: torch.tensor([200.0, -200.0, 200.0], requires_grad=True) for task in CHAIN}
    log_p, log_1mp = entire_space(logits, CHAIN)
    total = sum(t.sum() for t in (*log_p.values(), *log_1mp.values()))
    total.backward()
    assert all(torch.isfinite(t).all() for t in (*log_p.values(), *log_1mp.values()))
    assert all(torch.isfinite(logit.grad).all() for logit in logits.values())


def test_entire_space_gradients_match_finite_differences_on_both_branches():
    # log_p spans both sides of -ln 2, where log(1 - p) switches form: the gradient must not jump.
    logits = tuple(
        torch.tensor([-3.0, 0.2, 0.9, 4.0], dtype=torch.float64, requires_grad=True) for _ in CHAIN
    )

    def composed(*chain_logits):
        log_p, log_1mp = entire_space(dict(zip(CHAIN, chain_logits, strict=True)), CHAIN)
        return (*log_p.values(), *log_1mp.values())

    assert torch.autograd.gradcheck(composed, logits)


def test_log_1mp_agrees_with_log1mexp_of_log_p():
    logits = {task: torch.linspace(-8, 8, 33, dtype=torch.float64) for task in CHAIN}
    log_p, log_1mp = entire_space(logits, CHAIN)
    for task in CHAIN:
        torch.testing.assert_close(log_1mp[task], log1mexp(log_p[task]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_log1mexp_is_accurate_on_both_branches_with_finite_gradients(dtype, rtol):
    # -80, not lower: exp(a) must stay a normal float32 for float32 to be accurate at all.
    a = torch.tensor([-1e-12, -1e-6, -0.1, -math.log(2) + 1e-3, -math.log(2) - 1e-3, -1.0, -30.0, -80.0])
    a = a.to(dtype)
    expected = torch.tensor(
        [float(mpmath.log(1 - mpmath.exp(mpmath.mpf(float(v))))) for v in a], dtype=torch.float64
    )
    a.requires_grad_()
    value = log1mexp(a)
    torch.testing.assert_close(value.double(), expected, rtol=rtol, atol=0)
    value.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_heads_compose_towers_along_the_chain_in_any_config_order():
    tasks = parse_tasks(
        [  # a child listed before its parent: composition still goes parents first
            {"name": "conversion", "label": "conversion", "parent": "cart", "tower": {"hidden": []}},
            {"name": "click", "label": "click", "tower": {"hidden": [4]}},
            {"name": "cart", "label": "cart", "parent": "click"},
        ]
    )
    assert task_order(tasks) == ("click", "cart", "conversion")
    heads = TaskHeads({"click": 6, "cart": 6, "conversion": 6}, tasks)
    out = heads({task: torch.randn(5, 6) for task in CHAIN})
    assert out.tasks == ("conversion", "click", "cart")
    expected = sum(torch.nn.functional.logsigmoid(out.logit[t]) for t in CHAIN)
    torch.testing.assert_close(out.log_p["conversion"], expected)
    torch.testing.assert_close(out.conditional_prob("cart"), torch.sigmoid(out.logit["cart"]))
    assert (out.prob("conversion") <= out.prob("cart")).all() and (
        out.prob("cart") <= out.prob("click")
    ).all()


def test_task_list_errors_name_the_problem():
    with pytest.raises(ConfigError, match="task parents form a cycle: a -> c -> b -> a"):
        parse_tasks(
            [
                {"name": "a", "label": "x", "parent": "c"},
                {"name": "b", "label": "x", "parent": "a"},
                {"name": "c", "label": "x", "parent": "b"},
            ]
        )
    with pytest.raises(ConfigError, match=r"task 'cvr': parent 'click' is not a task \(ctr, cvr\)"):
        parse_tasks(
            [{"name": "ctr", "label": "click"}, {"name": "cvr", "label": "conversion", "parent": "click"}]
        )
    with pytest.raises(
        ConfigError, match="has parent 'ctr', so it is trained over the entire space: its space"
    ):
        parse_tasks(
            [
                {"name": "ctr", "label": "click"},
                {"name": "cvr", "label": "conversion", "parent": "ctr", "space": "click == 1"},
            ]
        )
    with pytest.raises(
        ConfigError, match="'ctr' is the parent of 'cvr', so it must be trained over the entire"
    ):
        parse_tasks(
            [
                {"name": "ctr", "label": "click", "space": "cart == 0"},
                {"name": "cvr", "label": "conversion", "parent": "ctr"},
            ]
        )
    with pytest.raises(ConfigError, match="task names used twice: ctr"):
        parse_tasks([{"name": "ctr", "label": "click"}, {"name": "ctr", "label": "cart"}])
    with pytest.raises(ConfigError, match="task 'ctr' names itself as parent"):
        TaskConfig(name="ctr", label="click", parent="ctr")
    with pytest.raises(ConfigError, match="task 'cvr': sample space 'click = 1': cannot parse"):
        TaskConfig(name="cvr", label="conversion", space="click = 1")
    with pytest.raises(ConfigError, match=r"label 'clicks' is not a label \(click, conversion\)"):
        validate_tasks([TaskConfig(name="ctr", label="clicks")], labels=("click", "conversion"))
    with pytest.raises(ConfigError, match="names 'cart', which is not a label"):
        validate_tasks([TaskConfig(name="cvr", label="click", space="cart == 1")], labels=("click",))
    with pytest.raises(ConfigError, match="unknown key 'towr' in tasks"):
        parse_tasks([{"name": "ctr", "label": "click", "towr": {"hidden": [8]}}])
