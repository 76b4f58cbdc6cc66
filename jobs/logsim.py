"""The hidden model behind the synthetic impression logs of ``python -m jobs.make_logs``.

Labels are drawn from a known model, so every row carries the probabilities it was sampled from
(the ``_truth_*`` columns) and the best achievable (oracle) AUC of each task is known. The knobs
named below are fields of ``jobs.make_logs.GeneratorConfig``.

Entities. Users and items that exist before the first day (``user_vocab``, ``item_vocab``) have
Zipf-Mandelbrot popularity; ranks are shuffled onto ids, so popular ids are not the small integers.
Each day adds a cohort of brand-new ids, drawn with probability ``new_user_rate``/``new_item_rate``;
cohort ids are unique to their day, so they never occur on an earlier day. Attributes, hidden
effects and latent vectors are fixed per entity and built once from ``seed``.

Click. ``logit = b_click + A - position_bias * log1p(slot_position)``, where the intrinsic affinity
``A`` = context effects (hour, weekday, device, os, network, page, session depth) + user effects
(age, gender, city, level, occupation, a per-user bias) + item effects (category, brand, shop, a
per-item quality) + discount + ``<u, v>``, with u = segment latent (age + gender + occupation) plus a
smaller individual part and v = category latent plus a smaller individual part. Most of A's variance
sits in parts seen in many rows; per-id parts are small and partly exposed by the ``*_hist_*``
features (noisy estimates of the entity's propensities) and the ``recent_*`` lists (drawn from the
user's favourite categories, which follow the user's latent vector).

Domain. Every impression comes from one of the app's scenes (home feed, search, item page, ...): the
``domain`` column, drawn with ``domain_shares``. A domain shifts the click affinity A by
``domain_click_shift`` plus a domain x category effect, and the purchase affinity below by
``domain_buy_shift`` plus another domain x category effect (std ``domain_interaction_scale``): the same
item is liked differently in each scene, the multi-domain setting of STAR. The domain is drawn from
a stream spawned from the rows' own, and its effects from a stream of their own, so the other columns
are the same whatever the domain knobs say.

Post-click stages (cart | click, conversion | cart). ``c`` = standardised A; ``o_s`` = standardised
own affinity of stage s, built from what the click does not use (per-id purchase bias and quality,
price relative to its category times the user's price sensitivity, rating, reviews, shop rating,
distance, a purchase latent), so o_s and c are independent::

    logit_s = b_s + post_click_scale * (rho * c + sqrt(1 - rho**2) * o_s) + selection_bias * c

``rho = task_correlation`` is the correlation of a stage's affinity with the click's (0:
independent, 1: identical up to scale); ``domain_task_correlation`` sets it per domain instead, so
the domains trade the tasks off differently. ``selection_bias`` adds c on top, so the clicked population
converts better than the unclicked one would: the gap a CVR model trained on clicks alone inherits.
Position affects the click only. The intercepts b_* are solved on a calibration sample (a week of
traffic) so the mean rates hit ``click_rate``, ``cart_rate`` (per click) and ``conversion_rate``
(per cart) whatever the other knobs say; single days differ a little by weekday.

Randomness. Independent streams from ``SeedSequence(seed, spawn_key=...)``: one for the entity
tables, one per day for its cohort, one per (day, file) for the rows, one for calibration. Days are
keyed by their number since the Unix epoch, so a day's rows do not depend on which other days were
generated with it, and files can be generated in any order, in parallel.

Headroom. ``World.without(parts)`` is this world with some parts of every logit taken out (per-id
effects, the domain x category effects, the user x item latent products), its intercepts and
standardisation kept; its ``probabilities`` on a file's stream are the same rows' truth minus those
parts: what a learner that knew everything else would predict (``python -m jobs.bench headroom``).
The entity tables and effects are built in jobs/logsim_entities.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from jobs.logsim_entities import (
    Table,
    _build_effects,
    _build_items,
    _build_users,
    _domain_effects,
    _pick_brand,
    draw,
    sigmoid,
    zipf_cdf,
)

if TYPE_CHECKING:
    from jobs.make_logs import GeneratorConfig

_WORLD, _COHORT, _FILE, _CALIBRATION, _DOMAIN = range(5)  # spawn keys of the random streams
SECONDS_PER_DAY = 86_400
# Relative traffic per hour (UTC): quiet at night, evening peak. Shapes ts within a day.
HOURLY_TRAFFIC = (2.0, 1.2, 0.8, 0.6, 0.5, 0.6, 1.0, 1.8, 2.6, 3.0, 3.2, 3.4,
                  3.6, 3.3, 3.2, 3.3, 3.4, 3.6, 4.0, 4.6, 5.0, 5.2, 4.4, 3.2)  # fmt: skip
DEVICE_SHARE = (0.5, 0.25, 0.12, 0.08, 0.05)
OS_SHARE = (0.55, 0.38, 0.05, 0.02)
NETWORK_SHARE = (0.6, 0.3, 0.08, 0.02)
REMOVABLE_PARTS = ("per_id", "domain_cross", "segment_cross")  # World.without


@dataclass(frozen=True)
class Impressions:
    """Sampled rows: flat columns (features, labels, truth) and list columns as (offsets, values)."""

    columns: dict[str, np.ndarray]
    lists: dict[str, tuple[np.ndarray, np.ndarray]]


def rng_for(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def file_rng(seed: int, day: int, index: int) -> np.random.Generator:
    """The stream of one file's rows: its day (since epoch) and index within the day name it."""
    return rng_for(seed, _FILE, day, index)


class World:
    """Entity tables, effects and calibration of one config: the same in every process."""

    def __init__(self, config: GeneratorConfig):
        self.config = cfg = config
        rng = rng_for(cfg.seed, _WORLD)
        self.effects = e = _build_effects(cfg, rng)
        e |= _domain_effects(cfg, rng_for(cfg.seed, _DOMAIN))
        self.vocab = {"user": cfg.user_vocab, "item": cfg.item_vocab}
        self.cohort_size = {"user": cfg.new_users_per_day, "item": cfg.new_items_per_day}
        self.new_rate = {"user": cfg.new_user_rate, "item": cfg.new_item_rate}
        zipf = {"user": cfg.user_zipf, "item": cfg.item_zipf}
        self.cdf = {kind: zipf_cdf(self.vocab[kind], zipf[kind], cfg.zipf_offset) for kind in zipf}
        self.cohort_cdf = {k: zipf_cdf(self.cohort_size[k], zipf[k], cfg.zipf_offset) for k in zipf}
        # Rank -> id permutations: popularity is independent of the id's value.
        self.rank_to_id = {kind: rng.permutation(self.vocab[kind]) for kind in zipf}
        past = {}  # expected impressions behind the *_hist_* features: proportional to popularity
        for kind in zipf:
            past[kind] = np.empty(self.vocab[kind])
            past[kind][self.rank_to_id[kind]] = np.diff(self.cdf[kind], prepend=0.0) * cfg.history_impressions
        items = _build_items(cfg, e, rng, np.arange(cfg.item_vocab), past["item"])
        e["price_edges"] = np.quantile(items["price"], np.linspace(0.1, 0.9, 9))  # price_level = decile
        items["price_level"] = np.searchsorted(e["price_edges"], items["price"], side="right")
        users = _build_users(cfg, e, rng, np.arange(cfg.user_vocab), past["user"])
        self.base = {"user": users, "item": items}
        self.removed: tuple[str, ...] = ()  # parts of the hidden model taken out (`without`)
        self._cohorts: dict[int, dict[str, Table]] = {}
        self._calibrate()

    def cohort(self, day: int) -> dict[str, Table]:
        """The users and items born on `day` (since epoch): a function of (seed, day) only."""
        if day not in self._cohorts:
            rng, size = rng_for(self.config.seed, _COHORT, day), self.cohort_size
            ids = {kind: self.vocab[kind] + day * size[kind] + np.arange(size[kind]) for kind in size}
            users = _build_users(self.config, self.effects, rng, ids["user"], np.zeros(size["user"]))
            items = _build_items(self.config, self.effects, rng, ids["item"], np.zeros(size["item"]))
            items["price_level"] = np.searchsorted(self.effects["price_edges"], items["price"], side="right")
            if len(self._cohorts) >= 8:  # a worker moves on to later days; keep memory flat
                self._cohorts.pop(next(iter(self._cohorts)))
            self._cohorts[day] = self._remove_parts({"user": users, "item": items})
        return self._cohorts[day]

    def sample(self, rng: np.random.Generator, day: int, n: int, q0: float, q1: float) -> Impressions:
        """n impressions of `day` filling the traffic quantiles [q0, q1) of the day, in time order."""
        impressions = self._features(rng, day, n, q0, q1)
        columns = impressions.columns
        truth = self._truth(columns)
        # Labels come from the stored float32 probabilities, so the truth columns are exact.
        click = rng.random(n) < truth["_truth_p_click"]
        cart = click & (rng.random(n) < truth["_truth_p_cart_given_click"])
        conversion = cart & (rng.random(n) < truth["_truth_p_conversion_given_cart"])
        for name in ("_affinity", "_position", "_cart_own", "_conversion_own"):
            del columns[name]
        labels = {"click": click, "cart": cart, "conversion": conversion}
        columns.update({name: label.astype(np.int8) for name, label in labels.items()}, **truth)
        return impressions

    def probabilities(self, rng: np.random.Generator, day: int, n: int, q0: float, q1: float) -> Table:
        """The truth columns (`_truth_p_click`, ...) of the rows `sample` draws from this stream,
        without their labels, each [n] float32. On a world `without` some parts: what a learner that
        knew every other part exactly would predict."""
        return self._truth(self._features(rng, day, n, q0, q1).columns)

    def without(self, parts: tuple[str, ...]) -> World:
        """A copy of this world with `parts` (of REMOVABLE_PARTS) taken out of every logit, its
        intercepts and standardisation kept: so each logit is exactly the true one minus those
        parts, and the same stream draws the same rows (the parts change no draw).

            per_id         users' click and purchase biases, items' qualities, and the individual
                           parts of both latent vectors (each keeps its segment / category part)
            domain_cross   the domain x category effects (each domain keeps its shift)
            segment_cross  the user x item latent products (segment x category, individual parts too)
        """
        unknown = set(parts) - set(REMOVABLE_PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; removable: {', '.join(REMOVABLE_PARTS)}")
        world = copy.copy(self)
        world.removed = tuple(dict.fromkeys((*self.removed, *parts)))  # on a world without some: both
        world.effects = dict(self.effects)
        if "domain_cross" in parts:
            for stage, shift in (
                ("click", self.config.domain_click_shift),
                ("buy", self.config.domain_buy_shift),
            ):
                effect = self.effects[f"domain_{stage}"]  # [domains, categories]
                world.effects[f"domain_{stage}"] = np.broadcast_to(
                    np.asarray(shift, np.float64)[:, None], effect.shape
                )
        world.base = world._remove_parts(self.base)
        world._cohorts = {}
        return world

    def _remove_parts(self, tables: dict[str, Table]) -> dict[str, Table]:
        """Copies of the user and item tables with this world's removed per-entity parts zeroed."""
        users, items = dict(tables["user"]), dict(tables["item"])
        e = self.effects
        if "per_id" in self.removed:
            for table, names in (
                (users, ("click_bias", "buy_bias")),
                (items, ("click_quality", "buy_quality")),
            ):
                for name in names:
                    table[name] = np.zeros_like(table[name])
            for kind, name in (("latent", "click_latent"), ("buy_latent", "buy_latent")):  # [n, k] each
                users[name] = (
                    e[f"age_{kind}"][users["age_bucket"]] + e[f"gender_{kind}"][users["gender"]]
                    + e[f"occupation_{kind}"][users["occupation"]]
                )  # fmt: skip
            items["click_latent"] = e["category_latent"][items["category"]]
            items["buy_latent"] = e["category_buy_latent"][items["category"]]
        if "segment_cross" in self.removed:
            users["click_latent"] = np.zeros_like(users["click_latent"])
            users["buy_latent"] = np.zeros_like(users["buy_latent"])
        return {"user": users, "item": items}

    def _truth(self, columns: Table) -> Table:
        """The truth columns of sampled rows, each [n] float32: p(click), p(cart | click),
        p(conversion | cart), p(conversion | click), p(click and conversion)."""
        intercepts = [self.calibration[f"{stage}_intercept"] for stage in ("click", "cart", "conversion")]
        logits = zip(intercepts, self._logits(columns), strict=True)
        p_click, p_cart, p_conv = (sigmoid(b + x).astype(np.float32) for b, x in logits)
        p_conv_click = (p_cart.astype(np.float64) * p_conv).astype(np.float32)
        return {
            "_truth_p_click": p_click, "_truth_p_cart_given_click": p_cart,
            "_truth_p_conversion_given_cart": p_conv, "_truth_p_conversion_given_click": p_conv_click,
            "_truth_p_ctcvr": (p_click.astype(np.float64) * p_conv_click).astype(np.float32),
        }  # fmt: skip

    def _logits(self, parts: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Click, cart|click and conversion|cart logits without their intercepts."""
        cfg, cal = self.config, self.calibration
        c = (parts["_affinity"] - cal["affinity_mean"]) / cal["affinity_std"]
        rho = cfg.task_correlation  # a float, or [n] per row from its domain
        if cfg.domain_task_correlation:
            rho = np.asarray(cfg.domain_task_correlation, dtype=np.float64)[parts["domain"]]  # [n]
        shared = (cfg.post_click_scale * rho + cfg.selection_bias) * c
        own = cfg.post_click_scale * np.sqrt(1.0 - rho**2)
        o_cart = (parts["_cart_own"] - cal["cart_own_mean"]) / cal["cart_own_std"]
        o_conv = (parts["_conversion_own"] - cal["conversion_own_mean"]) / cal["conversion_own_std"]
        return parts["_affinity"] + parts["_position"], shared + own * o_cart, shared + own * o_conv

    def _calibrate(self) -> None:
        """Standardise the affinities on a week of traffic, then solve the intercepts for the target rates."""
        cfg, rng = self.config, rng_for(self.config.seed, _CALIBRATION)
        per_day = -(-cfg.calibration_rows // 7)
        samples = [self._features(rng, day, per_day, 0.0, 1.0).columns for day in range(7)]
        names = ("_affinity", "_position", "_cart_own", "_conversion_own", "domain")
        parts = {name: np.concatenate([sample[name] for sample in samples]) for name in names}
        self.calibration = cal = {}
        for name in ("affinity", "cart_own", "conversion_own"):
            cal[f"{name}_mean"] = float(parts[f"_{name}"].mean())
            cal[f"{name}_std"] = float(parts[f"_{name}"].std())
        weights = np.ones(len(parts["_affinity"]))
        targets = {"click": cfg.click_rate, "cart": cfg.cart_rate, "conversion": cfg.conversion_rate}
        for (stage, target), logits in zip(targets.items(), self._logits(parts), strict=True):
            lo, hi = -30.0, 30.0
            for _ in range(50):  # bisection: the weighted mean rate grows with the intercept
                mid = 0.5 * (lo + hi)
                low = np.average(sigmoid(mid + logits), weights=weights) < target
                lo, hi = (mid, hi) if low else (lo, mid)
            cal[f"{stage}_intercept"] = 0.5 * (lo + hi)
            weights = weights * sigmoid(cal[f"{stage}_intercept"] + logits)  # next rate: per row reaching it

    def _draw(self, rng: np.random.Generator, n: int, kind: str, cohort: Table) -> tuple[Table, np.ndarray]:
        """The attributes of n users or items: Zipf over the base or, at new_rate, over today's cohort."""
        new = rng.random(n) < self.new_rate[kind]
        base_index = self.rank_to_id[kind][draw(self.cdf[kind], rng, n)]
        cohort_index = draw(self.cohort_cdf[kind], rng, n)[new]
        rows = {}
        for name, column in self.base[kind].items():
            rows[name] = column[base_index]
            rows[name][new] = cohort[name][cohort_index]
        return rows, new

    def _features(self, rng: np.random.Generator, day: int, n: int, q0: float, q1: float) -> Impressions:
        cfg, e = self.config, self.effects
        knots = np.concatenate([[0.0], np.cumsum(HOURLY_TRAFFIC)]) / sum(HOURLY_TRAFFIC)
        seconds = np.interp(np.sort(rng.uniform(q0, q1, n)), knots, np.arange(25) * 3600.0)
        seconds = np.minimum(seconds.astype(np.int64), SECONDS_PER_DAY - 1)
        hour, weekday = seconds // 3600, np.full(n, (day + 3) % 7)  # 1970-01-01 was a Thursday
        cohort = self.cohort(day)
        u, new_user = self._draw(rng, n, "user", cohort["user"])
        i, _ = self._draw(rng, n, "item", cohort["item"])
        device, os_ = draw(np.cumsum(DEVICE_SHARE), rng, n), draw(np.cumsum(OS_SHARE), rng, n)
        network = draw(np.cumsum(NETWORK_SHARE), rng, n)
        page, slot = np.minimum(rng.geometric(0.4, n) - 1, 19), rng.integers(0, 10, n)
        session_depth = (page * 10 + slot + rng.poisson(4.0, n)).astype(np.float32)
        distance_km = np.round(rng.lognormal(1.0, 1.0, n), 2).astype(np.float32)
        discount = np.floor(rng.beta(1.5, 6.0, n) * 20) / 20  # 5% steps, so always < 1
        discount = np.where(rng.random(n) < 0.5, 0.0, discount).astype(np.float32)
        pool = e["category_pool"]
        # A child stream: drawing the domain leaves every other draw of the rows' stream unchanged.
        domain = draw(np.cumsum(cfg.domain_shares), rng.spawn(1)[0], n)
        popular = lambda size: pool[rng.integers(0, len(pool), size)].astype(np.int64)
        empty_rate = np.where(new_user, 0.6, cfg.empty_recent_rate)  # new users have little history
        lists = {
            "recent_categories": _recent_list(
                rng, u["favourite_categories"], u["recent_length"], empty_rate, cfg.max_recent_categories,
                cfg.recent_from_favourites, popular,
            ),
            "recent_brands": _recent_list(
                rng, u["favourite_brands"], u["recent_length"] / 2, empty_rate + 0.05, cfg.max_recent_brands,
                cfg.recent_from_favourites, lambda size: _pick_brand(e, popular(size), rng),
            ),
        }  # fmt: skip
        affinity = (
            e["age_click"][u["age_bucket"]] + e["gender_click"][u["gender"]] + e["city_click"][u["city"]]
            + e["level_click"][u["user_level"]] + e["occupation_click"][u["occupation"]]
            + e["hour_click"][hour] + e["weekday_click"][weekday] + e["device_click"][device]
            + e["os_click"][os_] + e["network_click"][network] - 0.3 * np.log1p(page)
            + 0.15 * np.log1p(session_depth) + 2.0 * discount
            + e["category_click"][i["category"]] + e["brand_click"][i["brand"]] + e["shop_click"][i["shop"]]
            + u["click_bias"] + i["click_quality"]
            + np.einsum("nk,nk->n", u["click_latent"], i["click_latent"])
            + e["domain_click"][domain, i["category"]]
        )  # fmt: skip
        rated = i["review_count"] > 0
        buy = (
            u["buy_bias"] + i["buy_quality"] + e["age_buy"][u["age_bucket"]] + e["level_buy"][u["user_level"]]
            + e["occupation_buy"][u["occupation"]] + e["category_buy"][i["category"]]
            + np.einsum("nk,nk->n", u["buy_latent"], i["buy_latent"]) + 0.06 * np.log1p(i["review_count"])
            + np.where(rated, 0.3 * (i["item_rating"] - 4.0), 0.0) + 0.6 * (i["shop_rating"] - 4.5)
            + e["domain_buy"][domain, i["category"]]
        )  # fmt: skip
        # Expensive-for-its-category hurts purchases, less so for high-level users.
        price_term = -0.6 * i["relative_log_price"] * (1.3 - u["user_level"] / 9.0)
        columns = {
            "ts": day * SECONDS_PER_DAY + seconds, "user_id": u["id"], "item_id": i["id"],
            **{name: u[name] for name in ("age_bucket", "gender", "city", "user_level", "occupation")},
            **{name: i[name] for name in ("category", "brand", "shop", "price_level")},
            "hour": hour, "weekday": weekday, "device": device, "os": os_, "network": network,
            "slot_position": slot, "page": page, "domain": domain, "price": i["price"], "discount": discount,
            "item_hist_ctr": i["hist_ctr"], "item_hist_cvr": i["hist_cvr"],
            "user_hist_ctr": u["hist_ctr"], "user_hist_cvr": u["hist_cvr"],
            "user_active_days": u["active_days"], "item_age_days": i["age_days"],
            "item_review_count": i["review_count"], "item_rating": i["item_rating"],
            "shop_rating": i["shop_rating"], "distance_km": distance_km, "session_depth": session_depth,
            "_affinity": affinity, "_position": -cfg.position_bias * np.log1p(slot),
            "_cart_own": buy + 0.5 * price_term,
            "_conversion_own": buy + price_term - 0.2 * np.log1p(distance_km),
        }  # fmt: skip
        return Impressions(columns, lists)


def _recent_list(rng, favourites, mean_length, empty_rate, max_length, favourite_share, draw_popular):
    """Variable-length history lists: mostly the user's favourites, the rest popular items."""
    n = len(favourites)
    lengths = np.minimum(max_length, 1 + rng.poisson(np.maximum(mean_length - 1.0, 0.0)))
    lengths[rng.random(n) < empty_rate] = 0
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    rows = np.repeat(np.arange(n), lengths)
    values = draw_popular(len(rows))
    from_favourites = rng.random(len(rows)) < favourite_share
    picks = rng.integers(0, favourites.shape[1], int(from_favourites.sum()))
    values[from_favourites] = favourites[rows[from_favourites], picks]
    return offsets, values
