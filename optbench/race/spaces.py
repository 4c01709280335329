"""Each optimizer's space in a race, the quasi-random (Sobol) points every optimizer is drawn alike, the
boundary flags of under-tuning, and the widened range that answers one.

Sobol rather than Optuna's samplers: AlgoPerf's external tuning draws quasi-random points, which cover the
space more evenly than random ones at the few trials a race affords; the points are scrambled by the study's
seed, so the i-th point of study s lies at the same place of the unit cube for every optimizer (each cube
mapped onto its own ranges): the same sampler, in the strictest sense. The points are queued into the search's
study (Optuna's enqueue), so the search package runs, stores and resumes them like any other trial.
"""

from pathlib import Path

import numpy as np
import yaml

from optbench.compose import CONF
from optbench.errors import UserError
from optbench.search.spaces import parse_space

SPACES = CONF / "race" / "spaces.yaml"
EDGE = 0.05  # a chosen value in the outer 5% of its range (log scale for log ranges) is at the edge
WIDEN_DECADES = 1.0  # an edge-flagged log range is widened by this many decades on the flagged side


def default_spaces() -> dict:
    """{optimizer: space} declared in conf/race/spaces.yaml (`default` for an optimizer not listed)."""
    return yaml.safe_load(SPACES.read_text())


def space_for(optimizer: str, given: dict | None = None) -> dict:
    """The space (YAML forms) one optimizer is tuned over: the given file's, or the declared default."""
    if given and optimizer in given:
        return given[optimizer]
    spaces = default_spaces()
    return spaces.get(optimizer, spaces["default"])


def read_space_option(text: str) -> tuple[str, dict]:
    """--space NAME:FILE.yaml -> (NAME, the space the file holds)."""
    name, sep, path = text.partition(":")
    if not sep or not name or not Path(path).is_file():
        raise UserError(f"--space {text}: write OPTIMIZER:FILE.yaml, FILE a search space (key: log(low, high), ...)")
    space = yaml.safe_load(Path(path).read_text())
    parse_space(space)  # a bad range is one line here, before anything runs
    return name, space


def sobol_points(space: dict, n: int, seed: int) -> list[dict]:
    """n points of the scrambled Sobol sequence (seeded), mapped onto the space's ranges: log ranges
    log-uniformly, ints rounded, categories by equal shares of [0, 1)."""
    from scipy.stats import qmc

    dists = parse_space(space)
    cube = qmc.Sobol(d=len(dists), scramble=True, seed=seed).random(n) if n else np.zeros((0, len(dists)))
    return [{key: _value(d, u) for (key, d), u in zip(dists.items(), row)} for row in cube]


def _value(d, u: float):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(d, CategoricalDistribution):
        return d.choices[min(int(u * len(d.choices)), len(d.choices) - 1)]
    low, high = (np.log(d.low), np.log(d.high)) if d.log else (d.low, d.high)
    x = low + u * (high - low)
    x = float(np.exp(x)) if d.log else float(x)
    if isinstance(d, IntDistribution):
        return int(min(max(round(x), d.low), d.high))
    return float(min(max(x, d.low), d.high))


def edge(value, d, share: float = EDGE) -> str | None:
    """'low' or 'high' when `value` lies at its range's edge: within the outer `share` of a float range
    (in log units for a log range), at the first or last of an int range's or a choice's values (one grid
    step); else None."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(d, CategoricalDistribution):
        choices = list(d.choices)
        if len(choices) < 2 or value not in choices:
            return None
        return "low" if value == choices[0] else "high" if value == choices[-1] else None
    if isinstance(d, IntDistribution) and (d.high - d.low) / d.step <= 1 / share:
        return "low" if value <= d.low else "high" if value >= d.high else None
    low, high, v = (np.log(d.low), np.log(d.high), np.log(value)) if d.log else (d.low, d.high, value)
    u = (v - low) / (high - low)
    return "low" if u <= share else "high" if u >= 1 - share else None


def edges(params: dict, space: dict, trials: int | None = None) -> dict:
    """{key: 'low'|'high'} for each chosen value at its range's edge: the outer 5%, or with `trials` quasi-random
    points the outer 1/trials where that is wider (their grid step: 8 Sobol points leave the outer eighth of a
    range with at most one point, so a rate that keeps improving up to the top stops about there, short of 5%)."""
    dists = parse_space(space)
    share = max(EDGE, 1 / trials) if trials else EDGE
    flagged = {k: edge(v, dists[k], share) for k, v in params.items() if k in dists}
    return {k: side for k, side in flagged.items() if side}


def widened(space: dict, flagged: dict) -> dict:
    """The space with each flagged log range widened by WIDEN_DECADES on its flagged side (other flagged
    ranges are left as they are: a linear range such as a momentum has bounds that mean something)."""
    dists = parse_space(space)
    out = dict(space)
    for key, side in flagged.items():
        d = dists[key]
        if getattr(d, "log", False) and not isinstance(d.low, int):
            factor = 10.0 ** WIDEN_DECADES
            low, high = (d.low / factor, d.high) if side == "low" else (d.low, d.high * factor)
            out[key] = {"type": "float", "low": float(low), "high": float(high), "log": True}
    return out
