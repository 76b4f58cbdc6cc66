"""The entities and effects behind the synthetic logs (jobs.logsim's World builds them once from its
seed): users and items with their attributes, hidden effects and latent vectors, and the random
primitives both modules draw with."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from jobs.make_logs import GeneratorConfig

Table = dict[str, np.ndarray]  # named columns; an entity table has one row per entity
AGE_SHARE = (0.04, 0.16, 0.24, 0.2, 0.15, 0.1, 0.07, 0.04)
GENDER_SHARE = (0.48, 0.48, 0.04)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def zipf_cdf(n: int, exponent: float, offset: float) -> np.ndarray:
    """CDF over ranks 0..n-1 with weights (rank + 1 + offset) ** -exponent."""
    cdf = np.cumsum((np.arange(1, n + 1, dtype=np.float64) + offset) ** -exponent)
    return cdf / cdf[-1]


def draw(cdf: np.ndarray, rng: np.random.Generator, size) -> np.ndarray:
    """Ranks drawn from a CDF by inverse transform."""
    ranks = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(ranks, len(cdf) - 1).astype(np.int64)


def _pick_brand(e: Table, category: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A brand of each category; squaring the uniform makes a category's first brands its leaders."""
    within = np.floor(e["brand_count"][category] * rng.random(len(category)) ** 2).astype(np.int64)
    return e["brand_ids"][e["brand_start"][category] + within]


def _build_effects(cfg: GeneratorConfig, rng: np.random.Generator) -> Table:
    """Low-cardinality effects and latents: the learnable bulk of the logits."""
    nc, k_buy = cfg.num_categories, max(2, cfg.latent_dim // 2)
    normal = lambda std, size: rng.normal(0.0, std, size)
    e = {
        "age_click": normal(0.4, 8), "gender_click": normal(0.15, 3), "level_click": normal(0.2, 10),
        "city_click": normal(0.25, cfg.num_cities), "occupation_click": normal(0.35, 32),
        "hour_click": 0.4 * np.cos(2 * np.pi * (np.arange(24) - 21) / 24),  # evening peak
        "weekday_click": np.array([0.0, -0.02, 0.0, 0.02, 0.06, 0.15, 0.12]),  # Monday first
        "device_click": normal(0.45, 5), "os_click": normal(0.15, 4), "network_click": normal(0.25, 4),
        "category_click": normal(0.4, nc), "brand_click": normal(0.12, cfg.num_brands),
        "shop_click": normal(0.1, cfg.num_shops), "age_buy": normal(0.2, 8),
        "level_buy": 0.08 * (np.arange(10) - 4.5), "occupation_buy": normal(0.2, 32),
        "category_buy": normal(0.35, nc), "category_log_price": rng.normal(3.3, 0.9, nc),
        "shop_rating": np.clip(np.round(rng.normal(4.5, 0.25, cfg.num_shops), 1), 1.0, 5.0),
        "city_cdf": zipf_cdf(cfg.num_cities, 1.0, 1.0), "occupation_cdf": zipf_cdf(32, 0.7, 2.0),
        "category_cdf": zipf_cdf(nc, cfg.category_zipf, 1.0),
        "shop_cdf": zipf_cdf(cfg.num_shops, 0.8, cfg.zipf_offset), "shop_ids": rng.permutation(cfg.num_shops),
    }  # fmt: skip
    part = cfg.segment_latent_scale / math.sqrt(3.0)  # a segment latent sums three parts
    for kind, dim in (("latent", cfg.latent_dim), ("buy_latent", k_buy)):
        for name, size in (("age", 8), ("gender", 3), ("occupation", 32)):
            e[f"{name}_{kind}"] = normal(part, (size, dim)).astype(np.float32)
        e[f"category_{kind}"] = normal(cfg.segment_latent_scale, (nc, dim)).astype(np.float32)
    # Every category owns at least one brand; the others follow category popularity.
    more_brands = draw(e["category_cdf"], rng, cfg.num_brands - nc)
    brand_category = np.sort(np.concatenate([np.arange(nc), more_brands]))
    e["brand_start"] = np.searchsorted(brand_category, np.arange(nc))
    e["brand_count"] = np.bincount(brand_category, minlength=nc)
    e["brand_ids"] = rng.permutation(cfg.num_brands)  # a brand id does not reveal its category
    # A large Zipf sample to pick categories from uniformly: far faster than searchsorted for millions.
    e["category_pool"] = draw(e["category_cdf"], rng, 1 << 20).astype(np.int32)
    return e


def _domain_effects(cfg: GeneratorConfig, rng: np.random.Generator) -> Table:
    """[num_domains, num_categories] click and purchase logit effects: a shift per domain plus noise."""
    size = (len(cfg.domain_shares), cfg.num_categories)
    return {
        f"domain_{stage}": np.asarray(shift, dtype=np.float64)[:, None] + rng.normal(0.0, scale, size)
        for stage, shift, scale in (
            ("click", cfg.domain_click_shift, cfg.domain_interaction_scale),
            ("buy", cfg.domain_buy_shift, cfg.domain_interaction_scale),
        )
    }


def _hist_rates(rng, cfg: GeneratorConfig, past_impressions: np.ndarray, p_click, p_buy):
    """Yesterday's smoothed CTR and CVR of each entity: noisy when it had few impressions."""
    prior_ctr, prior_cvr = cfg.click_rate, cfg.cart_rate * cfg.conversion_rate
    strength = cfg.hist_prior_strength
    impressions = rng.poisson(past_impressions)
    clicks = rng.binomial(impressions, p_click)
    orders = rng.binomial(clicks, p_buy)
    ctr = (clicks + strength * prior_ctr) / (impressions + strength)
    cvr = (orders + strength * prior_cvr) / (clicks + strength)
    return ctr.astype(np.float32), cvr.astype(np.float32), orders


def _build_users(cfg: GeneratorConfig, e: Table, rng, ids: np.ndarray, past_impressions: np.ndarray) -> Table:
    n, s = len(ids), cfg.individual_latent_scale
    age, gender = draw(np.cumsum(AGE_SHARE), rng, n), draw(np.cumsum(GENDER_SHARE), rng, n)
    level, occupation = rng.binomial(9, 0.35, n), draw(e["occupation_cdf"], rng, n)
    city = draw(e["city_cdf"], rng, n)
    click_bias, buy_bias = rng.normal(0, cfg.id_effect_scale, (2, n))
    click_latent = e["age_latent"][age] + e["gender_latent"][gender] + e["occupation_latent"][occupation]
    click_latent += rng.normal(0, s, click_latent.shape).astype(np.float32)
    buy_latent = e["age_buy_latent"][age] + e["gender_buy_latent"][gender]
    buy_latent += e["occupation_buy_latent"][occupation]
    buy_latent += rng.normal(0, s, buy_latent.shape).astype(np.float32)
    # Favourites: the best of 8 popular categories under the user's own latent taste.
    favourites = np.empty((n, cfg.favourite_categories), dtype=np.int32)
    for lo in range(0, n, 50_000):
        hi = min(n, lo + 50_000)
        candidates = e["category_pool"][rng.integers(0, len(e["category_pool"]), (hi - lo, 8))]
        taste = np.einsum("nk,nck->nc", click_latent[lo:hi], e["category_latent"][candidates])
        best = np.argpartition(-taste, cfg.favourite_categories - 1, axis=1)[:, : cfg.favourite_categories]
        favourites[lo:hi] = np.take_along_axis(candidates, best, axis=1)
    user_click = click_bias + e["age_click"][age] + e["gender_click"][gender] + e["city_click"][city]
    user_click += e["level_click"][level] + e["occupation_click"][occupation]
    user_buy = buy_bias + e["age_buy"][age] + e["level_buy"][level]
    hist_ctr, hist_cvr, _ = _hist_rates(
        rng, cfg, past_impressions, sigmoid(logit(cfg.click_rate) + user_click),
        sigmoid(logit(cfg.cart_rate * cfg.conversion_rate) + user_buy),
    )  # fmt: skip
    active_days = np.minimum(365, 1 + rng.poisson(5 + 3 * np.sqrt(past_impressions)))
    return {  # narrow dtypes: every worker holds a copy
        "id": ids.astype(np.int64), "age_bucket": age.astype(np.int8), "gender": gender.astype(np.int8),
        "city": city.astype(np.int32), "user_level": level.astype(np.int8),
        "occupation": occupation.astype(np.int8), "click_bias": click_bias.astype(np.float32),
        "buy_bias": buy_bias.astype(np.float32), "click_latent": click_latent, "buy_latent": buy_latent,
        "favourite_categories": favourites,
        "favourite_brands": _pick_brand(e, favourites.ravel(), rng).astype(np.int32).reshape(n, -1),
        "recent_length": np.clip(2 + 2 * np.log1p(past_impressions), 2, 18).astype(np.float32),
        "hist_ctr": hist_ctr, "hist_cvr": hist_cvr,
        "active_days": np.where(past_impressions > 0, active_days, 0).astype(np.float32),
    }  # fmt: skip


def _build_items(cfg: GeneratorConfig, e: Table, rng, ids: np.ndarray, past_impressions: np.ndarray) -> Table:
    n, s = len(ids), cfg.individual_latent_scale
    category = draw(e["category_cdf"], rng, n)
    brand, shop = _pick_brand(e, category, rng), e["shop_ids"][draw(e["shop_cdf"], rng, n)]
    log_price = e["category_log_price"][category] + rng.normal(0, 0.6, n)
    price = np.maximum(np.round(np.exp(log_price), 2), 0.5)
    click_quality, buy_quality = rng.normal(0, cfg.id_effect_scale, (2, n))
    click_latent = e["category_latent"][category] + rng.normal(0, s, (n, cfg.latent_dim))
    buy_latent = e["category_buy_latent"][category]
    buy_latent = buy_latent + rng.normal(0, s, buy_latent.shape)
    item_click = click_quality + e["category_click"][category]
    item_click += e["brand_click"][brand] + e["shop_click"][shop]
    hist_ctr, hist_cvr, orders = _hist_rates(
        rng, cfg, past_impressions, sigmoid(logit(cfg.click_rate) + item_click),
        sigmoid(logit(cfg.cart_rate * cfg.conversion_rate) + buy_quality + e["category_buy"][category]),
    )  # fmt: skip
    reviews = rng.binomial(orders, 0.5)
    # Ratings follow purchase quality, the more precisely the more reviews back them; 0 = no review yet.
    rating = np.clip(np.round(4.1 + 1.5 * buy_quality + rng.normal(0, 1, n) / np.sqrt(reviews + 1), 1), 1, 5)
    new = past_impressions <= 0
    return {
        "id": ids.astype(np.int64), "category": category.astype(np.int32), "brand": brand.astype(np.int32),
        "shop": shop.astype(np.int32), "price": price.astype(np.float32),
        "relative_log_price": (np.log(price) - e["category_log_price"][category]).astype(np.float32),
        "click_quality": click_quality.astype(np.float32), "buy_quality": buy_quality.astype(np.float32),
        "click_latent": click_latent.astype(np.float32), "buy_latent": buy_latent.astype(np.float32),
        "hist_ctr": hist_ctr, "hist_cvr": hist_cvr,
        "age_days": np.where(new, rng.random(n), 1 + rng.exponential(250, n)).astype(np.float32),
        "review_count": reviews.astype(np.float32),
        "item_rating": np.where(reviews > 0, rating, 0).astype(np.float32),
        "shop_rating": e["shop_rating"][shop].astype(np.float32),
    }  # fmt: skip
