"""The promotion gate: a candidate run against its baseline on the same rows (jobs.evaluate --gate,
jobs.daily). Pure Python over the report's metrics dict (jobs.report.compute.compute_metrics).

Over all days, a target fails the gate on any of three checks:

- auc:         its AUC is more than `threshold` below the baseline's (or not computable while the
               baseline's is);
- calibration: its pred/obs (sum of predictions / positives) lies outside `calibration_band`
               beyond the noise of the positive count: the ratio's ~95% interval
               [S / (P + z sqrt P), S / (P - z sqrt P)] (S the sum of predictions, P the positives,
               Poisson) lies wholly outside the band. On many positives this is the band itself; on
               few (a CVR over ~100 clicked-and-converted rows varies by +-20% on noise alone) a
               calibrated model is not rejected for noise. Checked for every target of the run,
               a baseline target or not; a target without positives has no ratio and is not checked;
- logloss:     its logloss is more than `max_logloss_increase` (relative: 0.01 = 1%) above the
               baseline's (or not computable while the baseline's is).

Defaults. The band [0.9, 1.1]: a served CTR model is used as a probability (bids, ranking across
surfaces, budget pacing), so a 10% bias in the mean moves spend by 10%. It is wide enough for a
model trained to convergence (the demo's cold start: 1.005) and far from the failure it exists to
catch (the demo's warm-started third day: 1.49, from training on time-ordered rows). The noise
allowance keeps it from rejecting small samples: at 5,000 held-out rows a CVR has ~30 positives and
pred/obs varies by +-35% on noise alone. Logloss +1%: both models are scored on the same rows, so
the rows' own noise cancels in the ratio; in daily schedules on generated logs (50k rows a day)
sane candidates moved logloss by -11% to +0.0%, while the miscalibrated ones rose +2.1% (pred/obs
1.67) and +7.8% (0.47). `None` turns a check off.

Example::

    >>> gate = gate_check(metrics, 0.002, calibration_band=(0.9, 1.1), max_logloss_increase=0.01)
    >>> gate["failures"][0]
    {'task': 'ctr', 'check': 'calibration', 'pred_over_obs': 1.49, 'interval': [1.41, 1.58], ...}
    >>> describe_failure(gate["failures"][0])
    'ctr: pred/obs 1.490 is outside the band [0.9, 1.1]: it predicts 49.0% more positives than observed ...'
"""

from __future__ import annotations

import math

DEFAULT_CALIBRATION_BAND = (0.9, 1.1)
DEFAULT_MAX_LOGLOSS_INCREASE = 0.01
NOISE_Z = 1.96  # the ratio's interval: +-1.96 sd of a Poisson positive count (~95%)
OFF = ("off", "none", "")


def parse_band(text: str | None) -> tuple[float, float] | None:
    """'0.9,1.1' -> (0.9, 1.1); 'off' / 'none' -> None. The band must hold 1 (a calibrated model)."""
    if text is None or text.strip().lower() in OFF:
        return None
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--calibration-band takes LOW,HIGH (e.g. 0.9,1.1) or 'off', got {text!r}") from None
    return check_band((low, high))


def check_band(band: tuple[float, float] | None) -> tuple[float, float] | None:
    if band is None:
        return None
    low, high = (float(b) for b in band)
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= 1 <= high):
        raise ValueError(f"the calibration band must satisfy 0 <= LOW <= 1 <= HIGH, got [{low}, {high}]")
    return low, high


def parse_increase(text: str | None) -> float | None:
    """'0.01' -> 0.01 (1%); 'off' / 'none' -> None."""
    if text is None or text.strip().lower() in OFF:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"--max-logloss-increase takes a relative increase (0.01 = 1%) or 'off', got {text!r}"
        ) from None
    return check_increase(value)


def check_increase(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"--max-logloss-increase must be a non-negative fraction, got {value}")
    return value


def ratio_interval(ratio: float, positives: int, z: float = NOISE_Z) -> tuple[float, float]:
    """[low, high] of pred/obs given the noise of a Poisson count of `positives` (high may be inf)."""
    spread = z * math.sqrt(positives)
    low = ratio * positives / (positives + spread)
    high = ratio * positives / (positives - spread) if positives > spread else math.inf
    return low, high


def _calibration_failure(name: str, overall: dict, band: tuple[float, float]) -> dict | None:
    ratio = overall["run"]["calibration"]["ratio"]["value"]
    positives = int(overall["positives"])
    if ratio is None or not positives:
        return None
    low, high = ratio_interval(ratio, positives)
    if band[0] <= high and low <= band[1]:  # the interval reaches into the band
        return None
    base = overall.get("baseline", {}).get("calibration", {}).get("ratio", {}).get("value")
    return {
        "task": name,
        "check": "calibration",
        "pred_over_obs": ratio,
        "interval": [low, high if math.isfinite(high) else None],
        "band": list(band),
        "positives": positives,
        "predicted": ratio * positives,
        "baseline_pred_over_obs": base,
    }


def _logloss_failure(name: str, overall: dict, allowed: float) -> dict | None:
    loss, base = overall["run"]["logloss"]["value"], overall["baseline"]["logloss"]["value"]
    if base is None:
        return None
    increase = None if loss is None else (loss - base) / base
    if increase is not None and increase <= allowed:
        return None
    return {
        "task": name,
        "check": "logloss",
        "logloss": loss,
        "baseline_logloss": base,
        "increase": increase,
        "allowed": allowed,
    }


def gate_check(
    metrics: dict,
    threshold: float,
    calibration_band: tuple[float, float] | None = DEFAULT_CALIBRATION_BAND,
    max_logloss_increase: float | None = DEFAULT_MAX_LOGLOSS_INCREASE,
) -> dict:
    """The gate over the report's metrics (see module doc).

    Returns {"threshold", "calibration_band", "max_logloss_increase", "passed", "failures",
    "compared", "calibration_checked"}; each failure names its "task" and "check" (auc: "auc",
    "baseline_auc", "drop", "allowed"; calibration: "pred_over_obs", "interval", "band", "positives",
    "predicted"; logloss: "logloss", "baseline_logloss", "increase", "allowed").
    """
    band = check_band(calibration_band)
    allowed = check_increase(max_logloss_increase)
    failures, compared, calibrated = [], [], []
    for name, target in metrics.items():
        overall = target["overall"]
        if band is not None and overall["run"]["calibration"]["ratio"]["value"] is not None:
            calibrated.append(name)
            failure = _calibration_failure(name, overall, band)
            failures += [failure] if failure else []
        if "baseline" not in overall:
            continue
        auc, base = overall["run"]["auc"]["value"], overall["baseline"]["auc"]["value"]
        if base is not None:
            compared.append(name)
            drop = None if auc is None else base - auc
            if drop is None or drop > threshold:
                failures.append(
                    {"task": name, "check": "auc", "auc": auc, "baseline_auc": base, "drop": drop}
                    | {"allowed": threshold}
                )
        if allowed is not None:
            failure = _logloss_failure(name, overall, allowed)
            failures += [failure] if failure else []
    return {
        "threshold": threshold,
        "calibration_band": list(band) if band else None,
        "max_logloss_increase": allowed,
        "passed": not failures,
        "failures": failures,
        "compared": compared,
        "calibration_checked": calibrated,
    }


def describe_failure(failure: dict) -> str:
    """One failure as one line: the task, the check, and by how much."""
    task, check = failure["task"], failure.get("check", "auc")
    if check == "calibration":
        ratio, (low, high) = failure["pred_over_obs"], failure["band"]
        direction = "more" if ratio > 1 else "fewer"
        interval = failure["interval"]
        upper = "inf" if interval[1] is None else f"{interval[1]:.3f}"
        return (
            f"{task}: pred/obs {ratio:.3f} is outside the band [{low}, {high}]: it predicts "
            f"{abs(ratio - 1):.1%} {direction} positives than observed ({failure['predicted']:,.1f} "
            f"predicted, {failure['positives']:,} observed; noise interval {interval[0]:.3f}..{upper})"
        )
    if check == "logloss":
        if failure["increase"] is None:
            return f"{task}: logloss not computable (baseline {failure['baseline_logloss']:.4f})"
        return (
            f"{task}: logloss {failure['logloss']:.4f} is {failure['increase']:.2%} above the baseline's "
            f"{failure['baseline_logloss']:.4f} (allowed +{failure['allowed']:.2%})"
        )
    if failure["drop"] is None:
        return f"{task}: AUC not computable (baseline {failure['baseline_auc']:.4f})"
    return (
        f"{task}: AUC {failure['auc']:.4f} is {failure['drop']:.4f} below the baseline's "
        f"{failure['baseline_auc']:.4f} (allowed drop {failure.get('allowed')})"
    )


def describe_gate(gate: dict) -> str:
    """The gate's rules in words, e.g. 'AUC drop <= 0.002, pred/obs in [0.9, 1.1], logloss +<= 1.00%'."""
    rules = [f"AUC drop <= {gate['threshold']}"]
    if gate.get("calibration_band"):
        low, high = gate["calibration_band"]
        rules.append(f"pred/obs in [{low}, {high}]")
    if gate.get("max_logloss_increase") is not None:
        rules.append(f"logloss rise <= {gate['max_logloss_increase']:.2%}")
    return ", ".join(rules)
