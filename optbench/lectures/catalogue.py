"""The catalogue: conf/lectures/<claim>.yaml read and checked, and the experiment a claim asks for at a scale."""

import itertools
import re
from pathlib import Path

import yaml

from optbench.compose import CONF, compose_config, suggest
from optbench.errors import UserError
from optbench.lectures.measures import QUANTITIES

CATALOGUE = CONF / "lectures"
# default: this 2-core CPU runs the whole catalogue in about 15 minutes; middle: a laptop over a lunch break
# (about an hour here); full: a GPU
SCALES = ("default", "middle", "full")
OUT = "lectures"
KEYS = {"quote", "lecture", "condition", "design", "differs", "overrides", "groups", "seeds", "quantity", "predict",
        "combine", "target", "x", "scales", "not_testable", "search"}
REQUIRED = ("quote", "lecture", "groups", "seeds", "quantity", "predict")
# what a larger scale may change: its own condition, seeds, shared overrides and per-group overrides on top
SCALE_KEYS = {"condition", "seeds", "overrides", "groups"}
# what a search claim's group may set: the rest of the search is the claim's (`search`, `overrides`, the seeds)
SEARCH_GROUP_KEYS = ("sampler", "grid_points", "trials", "space")
# quantities read from one run's summary, so that a search's chosen trial gives them
SEARCH_QUANTITIES = ("best_val_acc", "test_acc")
X_AXES = ("step", "epoch", "examples", "layer")
COMBINE = ("all", "any")


def names(catalogue: Path = CATALOGUE) -> list[str]:
    return sorted(p.stem for p in Path(catalogue).glob("*.yaml"))


def load(name: str, catalogue: Path = CATALOGUE) -> dict:
    """One claim from `catalogue`, checked: every key known, every group the predictions name defined."""
    path = Path(catalogue) / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no claim {name!r} in {catalogue}{suggest(name, names(catalogue))}; "
                        "`optbench lectures list` shows them")
    try:
        claim = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    unknown, missing = sorted(set(claim) - KEYS), [k for k in REQUIRED if k not in claim]
    problems = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
    if problems:
        raise UserError(f"{path}: " + "; ".join(problems))
    if claim["quantity"] not in QUANTITIES:
        raise UserError(f"{path}: quantity {claim['quantity']!r} is not one of {', '.join(QUANTITIES)}")
    claim.setdefault("combine", "all")
    for key, allowed in (("x", X_AXES), ("combine", COMBINE)):
        if claim.get(key, "step") not in allowed:
            raise UserError(f"{path}: {key} {claim[key]!r} must be one of {', '.join(allowed)}")
    claim["predict"] = [parse_prediction(p, claim["groups"], path) for p in claim["predict"]]
    if "search" in claim:
        _check_search_claim(claim, path)
    _check_scales(claim, path)
    claim.update(name=name, path=str(path), description=_first_comment(path))
    return claim


def parse_prediction(text: str, groups: dict, path) -> tuple[str, str, str]:
    """'a > b' -> ('a', '>', 'b'): group a's quantity is predicted higher than group b's."""
    found = re.fullmatch(r"\s*(\S+)\s*([<>])\s*(\S+)\s*", str(text))
    if not found or found[1] not in groups or found[3] not in groups:
        raise UserError(f"{path}: prediction {text!r} must read 'GROUP > GROUP' or 'GROUP < GROUP' "
                        f"with groups among {', '.join(groups)}")
    return found[1], found[2], found[3]


def _check_search_claim(claim: dict, path) -> None:
    if not isinstance(claim["search"], dict) or "space" not in claim["search"]:
        raise UserError(f"{path}: search must be a mapping with a space (as `optbench search --space` files hold)")
    if claim["quantity"] not in SEARCH_QUANTITIES:
        raise UserError(f"{path}: a search claim's quantity is read at the chosen trial: one of "
                        f"{', '.join(SEARCH_QUANTITIES)}")
    for group, settings in claim["groups"].items():
        unknown = set(settings or {}) - set(SEARCH_GROUP_KEYS) if isinstance(settings, dict) else None
        if unknown is None or unknown:
            raise UserError(f"{path}: group {group} of a search claim sets search settings among "
                            f"{', '.join(SEARCH_GROUP_KEYS)}" + (f", not {sorted(unknown)}" if unknown else ""))


def _check_scales(claim: dict, path) -> None:
    scales, untestable = claim.get("scales") or {}, claim.get("not_testable") or {}
    if not isinstance(scales, dict) or not isinstance(untestable, dict):
        raise UserError(f"{path}: scales and not_testable are mappings from a scale ({', '.join(SCALES)})")
    for scale in scales:
        if scale not in SCALES[1:]:
            raise UserError(f"{path}: scales.{scale}: a larger scale is one of {', '.join(SCALES[1:])} "
                            "(the default scale is the claim's own keys)")
    for scale in untestable:
        if scale not in SCALES:
            raise UserError(f"{path}: not_testable.{scale}: the scales are {', '.join(SCALES)}")
    for scale, block in scales.items():
        if unknown := set(block or {}) - SCALE_KEYS:
            raise UserError(f"{path}: scales.{scale} sets {sorted(unknown)}; "
                            f"it may set {', '.join(sorted(SCALE_KEYS))}")
        if extra := set((block or {}).get("groups") or {}) - set(claim["groups"]):
            raise UserError(f"{path}: scales.{scale}.groups names {sorted(extra)}, not groups of the claim")
    if not all(isinstance(v, str) and v.strip() for v in untestable.values()):
        raise UserError(f"{path}: not_testable gives per scale the reason, a sentence")


def condition(claim: dict, scale: str = "default") -> str:
    """The experiment's condition at `scale`: what the verdict holds under, printed next to it."""
    return ((claim.get("scales") or {}).get(scale) or {}).get("condition") or claim.get("condition", "")


def untestable(claim: dict, scale: str = "default") -> str | None:
    """Why no fair test of the claim fits `scale`'s budget, or None when one does."""
    return (claim.get("not_testable") or {}).get(scale)


def _first_comment(path: Path) -> str:
    return next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")


def experiment(claim: dict, scale: str = "default", extra=()) -> tuple[dict, list[int]]:
    """(group -> its full override list, seeds) at `scale`; a larger scale's block (`scales: {middle: ...}`)
    adds its overrides on top of the claim's, its per-group ones on top of the group's, and `extra` (the
    command line's overrides) wins over all. A search claim's group is its search's settings."""
    bigger = (claim.get("scales") or {}).get(scale) or {}
    seeds = list(range(int(bigger.get("seeds", claim["seeds"]))))
    shared = [*(claim.get("overrides") or []), *(bigger.get("overrides") or [])]
    per_group = bigger.get("groups") or {}
    if "search" in claim:
        return {g: {**claim["search"], **(settings or {}), "overrides": merge_overrides(shared, extra)}
                for g, settings in claim["groups"].items()}, seeds
    return {g: merge_overrides(shared, o or [], per_group.get(g) or [], extra)
            for g, o in claim["groups"].items()}, seeds


def override_key(line: str) -> str:
    return line.split("=", 1)[0].lstrip("+~")


def merge_overrides(*lists) -> list[str]:
    """Later lists win per key: Hydra refuses the same key twice on one command line."""
    merged: dict[str, str] = {}
    for line in itertools.chain(*lists):
        merged.pop(override_key(line), None)  # a key set again moves to where it was set last
        merged[override_key(line)] = line
    return list(merged.values())


def check(claim: dict, scale: str, extra) -> None:
    """Compose every group's config as its multirun (or its search's first grid point) will: a bad override in
    a claim file, its space or on the command line is one line before anything trains."""
    if "search" in claim:
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise UserError(f"claim {claim['name']} runs optbench search, which needs optuna: "
                            "pip install 'optbench[search]'") from None
    for group, overrides in compositions(claim, scale, extra).items():
        try:
            compose_config(overrides)
        except UserError as e:
            raise UserError(f"claim {claim['name']}, group {group}: {e}") from None


def compositions(claim: dict, scale: str = "default", extra=()) -> dict:
    """group -> the overrides of one of its runs, less the seed: a search claim's first grid point of its space."""
    groups = experiment(claim, scale, extra)[0]
    if "search" not in claim:
        return groups
    from optbench import search

    return {g: [*spec["overrides"], *search.trial_overrides(search.grid(search.parse_space(spec["space"]), 2)[0])]
            for g, spec in groups.items()}

