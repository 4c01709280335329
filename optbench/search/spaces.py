"""Search spaces: the YAML forms of a range, Optuna's distributions, grids, and the overrides one point makes;
the samplers that draw points, seeded per trial."""

import itertools
import re

import numpy as np
from hydra.core.override_parser.overrides_parser import OverridesParser

from optbench.compose import groups
from optbench.errors import UserError

SAMPLERS = ("random", "tpe", "cmaes", "grid")
FORMS = ("log(low, high), uniform(low, high), int(low, high), choice(a, b, ...), a YAML list, "
         "or {type, low, high, log, step, choices}")


def parse_space(space: dict) -> dict:
    """{config key: optuna distribution} from the YAML forms in FORMS."""
    from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(space, dict) or not space:
        raise UserError(f"search space must be a non-empty mapping of config keys to ranges ({FORMS})")
    out: dict[str, BaseDistribution] = {}
    for key, value in space.items():
        try:
            if isinstance(value, list):
                value = {"type": "categorical", "choices": value}
            elif isinstance(value, str):
                value = _parse_short(value)
            if not isinstance(value, dict):
                raise ValueError(f"{value!r} is not a range")
            kind, log, step = value.get("type"), bool(value.get("log", False)), value.get("step")
            if kind == "categorical":
                out[key] = CategoricalDistribution([_choice(c) for c in value["choices"]])
            elif kind == "float":
                out[key] = FloatDistribution(float(value["low"]), float(value["high"]), log=log,
                                             step=None if step is None else float(step))
            elif kind == "int":
                out[key] = IntDistribution(int(float(value["low"])), int(float(value["high"])), log=log,
                                           step=1 if step is None else int(float(step)) or 1)
            else:
                raise ValueError(f"type {kind!r} is not float, int or categorical")
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"search space key {key}: {e}; write one of {FORMS}") from None
    return out


def _parse_short(text: str) -> dict:
    """`log(1e-5, 1e1)` and friends; the arguments are parsed as Hydra parses override values."""
    match = re.fullmatch(r"\s*(\w+)\((.*)\)\s*", text)
    if not match or match[1] not in ("log", "uniform", "int", "choice"):
        raise ValueError(f"{text!r} is not a range")
    try:
        args = OverridesParser.create().parse_override(f"x=[{match[2]}]").value()
    except Exception:
        raise ValueError(f"cannot read the arguments of {text!r}") from None
    assert isinstance(args, list)  # x=[...] is a list
    if match[1] == "choice":
        return {"type": "categorical", "choices": args}
    if len(args) != 2:
        raise ValueError(f"{text!r} needs exactly two numbers, low and high")
    kind = "int" if match[1] == "int" else "float"
    return {"type": kind, "low": args[0], "high": args[1], "log": match[1] == "log"}


def _choice(value):
    # optuna stores str/int/float/bool/None; a list (model.hidden=[256,256]) travels as its override text
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return override_text(value)


def override_text(value) -> str:
    """A value as Hydra's override grammar writes it (null, true, [a,b])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    return str(value)


def grid(space: dict, points: int) -> list[dict]:
    """Every combination: categorical choices, ints (thinned to `points` if more), `points` floats per range."""
    from optuna.distributions import CategoricalDistribution

    axes: dict[str, list] = {}
    for key, d in space.items():
        if isinstance(d, CategoricalDistribution):
            axes[key] = list(d.choices)
            continue
        if d.step is not None and (d.high - d.low) / d.step + 1 <= points:
            values = np.arange(d.low, d.high + d.step / 2, d.step)
        elif d.log:
            values = np.geomspace(d.low, d.high, points)
        else:
            values = np.linspace(d.low, d.high, points)
        values = np.clip(values, d.low, d.high)  # geomspace may round just outside
        is_int = isinstance(d.low, int)
        axes[key] = sorted({int(round(v)) if is_int else float(v) for v in values})
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def suggest(trial, key: str, d):
    """The trial's value for `key`, asked from its distribution `d`."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(key, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)


def trial_overrides(params: dict) -> list[str]:
    """Hydra overrides for a trial: `group=option` for config groups, `++key=value` (set or add) for keys."""
    return [f"{'' if k in groups() else '++'}{k}={override_text(v)}" for k, v in params.items()]


def seeded_sampler(spec: dict, *trial: int):
    """spec's sampler (SAMPLERS) for one trial, seeded by the search's sampler_seed and the trial's number (and worker).

    Hashed, not added: with seed + number, sampler seed 1's trial n drew seed 0's trial n + 1, and two
    searches meant as independent repeats shared all but one point.
    """
    import optuna

    seed = int(np.random.SeedSequence([spec["sampler_seed"], *trial]).generate_state(1)[0])
    if spec["sampler"] == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if spec["sampler"] == "cmaes":
        # the cmaes package does the work; categorical keys fall back to random sampling
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)  # random, or grid: its points are enqueued, never sampled
