"""A search's settings: presets, defaults, search.yaml (what a resumed search may change), and its budget."""

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from optbench.compose import CONF, check_group_choices, compose_config
from optbench.errors import UserError
from optbench.results import RUN_SETTINGS, rundir
from optbench.search.spaces import SAMPLERS, grid, parse_space, trial_overrides

SAVED = "search.yaml"
DEFAULTS: dict[str, Any] = {"sampler": "tpe", "trials": None, "seeds": [0], "grid_points": 5, "overrides": [],
                            "final_seeds": 0, "sampler_seed": 0, "budgets": None, "schedules": None, "storage": None}
SPEC_KEYS = ("space", *(k for k in DEFAULTS if k != "storage"))  # what a preset or search.yaml may set
TRIALS = 20  # finished trials wanted when neither --trials nor a grid says how many
# keys a resumed search may change: a larger budget does not change what the finished trials mean
GROWABLE = ("trials", "budgets")
# search.yaml's record of --storage (password hidden) is not compared: workers may name one server differently
UNCOMPARED = (*GROWABLE, "storage")


def load_spec(name: str) -> dict:
    """A preset under conf/search/ by name, or a YAML file by path."""
    path = Path(name)
    if not path.is_file():
        path = CONF / "search" / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONF / "search").glob("*.yaml"))
        raise UserError(f"--space {name}: no such file or preset; presets: {', '.join(options)}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(SPEC_KEYS)}")
    return spec


def budget(space: dict, spec: dict) -> int:
    """Trials the search runs in all: `trials`, or a grid's size (a grid never runs more than its points)."""
    if spec["sampler"] == "grid":
        points = len(grid(space, spec["grid_points"]))
        return min(spec["trials"] or points, points)
    return spec["trials"] or TRIALS


def settle_spec(search_dir: Path, spec: dict) -> dict:
    """settled(), then written to search.yaml."""
    full = settled(search_dir, spec)
    save_spec(search_dir, full)
    return full


def settled(search_dir: Path, spec: dict) -> dict:
    """Fill defaults; a directory that already holds a search keeps its settings (only GROWABLE ones may grow).
    Every setting is checked (check_spec) here, before anything is written."""
    saved = read_saved(search_dir)
    full = {**DEFAULTS, **{k: v for k, v in spec.items() if v is not None}}
    if saved is not None:
        given = {k: v for k, v in spec.items() if v is not None and k not in UNCOMPARED}
        clash = [k for k, v in given.items() if comparable(k, saved.get(k)) != comparable(k, v)]
        if clash:
            raise UserError(f"{search_dir} holds a search with other {', '.join(clash)}; "
                            "resume it without changing them, or pick a new --dir")
        full = {**DEFAULTS, **saved, **{k: spec[k] for k in UNCOMPARED if spec.get(k) is not None}}
        if spec.get("overrides") is not None:  # the saved experiment, run where and how this command says
            ours = [str(o) for o in spec["overrides"]]
            full["overrides"] = [*_factors(saved.get("overrides")), *(o for o in ours if o not in _factors(ours))]
    if full["sampler"] not in SAMPLERS:
        raise UserError(f"sampler={full['sampler']} is not a sampler; choices: {', '.join(SAMPLERS)}")
    if "space" not in full:
        raise UserError("no search space: pass --space NAME (a preset in conf/search) or --space FILE.yaml")
    full["seeds"] = [int(s) for s in full["seeds"]]
    full["overrides"] = [str(o) for o in full["overrides"]]
    if full["budgets"] is not None:
        if not full["schedules"]:
            raise UserError("budgets compare one-shot runs with tuning budgets per schedule: they need a space with "
                            "`schedules` (--space crowded_valley)")
        full["budgets"] = sorted({int(b) for b in full["budgets"]})
        if full["budgets"][0] < 1:
            raise UserError(f"budgets {full['budgets']} must be trial counts >= 1")
        full["trials"] = max(full["trials"] or 0, full["budgets"][-1])  # the largest budget needs that many trials
    check_spec(full)
    return full


def check_spec(spec: dict) -> None:
    """UserError unless the space parses and its first grid point composes with the overrides (every key and
    value checked as `optbench train` checks them), so a typo is refused before search.yaml or a run exists."""
    space = parse_space(spec["space"])
    schedules = [f"schedule={name}" for name in spec.get("schedules") or []]
    check_group_choices(schedules)
    first = trial_overrides(grid(space, 2)[0])
    cfg = compose_config([*spec["overrides"], *schedules[:1], *first, f"seed={spec['seeds'][0]}"])
    for key in space:
        # a trial sets a key with ++ (optimizer arguments its YAML file does not list), which adds a misspelt
        # key to a typed node (trainer, data, model) too: the run would ignore it
        parent, _, leaf = key.rpartition(".")
        typed = OmegaConf.get_type(OmegaConf.select(cfg, parent)) if parent else None
        if dataclasses.is_dataclass(typed) and leaf not in {f.name for f in dataclasses.fields(typed)}:
            keys = ", ".join(f.name for f in dataclasses.fields(typed))
            raise UserError(f"search space key {key}: {parent} has no key {leaf}; its keys: {keys}")


def save_spec(search_dir: Path, spec: dict) -> None:
    """search.yaml, written atomically (the folder made if need be)."""
    search_dir.mkdir(parents=True, exist_ok=True)
    # atomic: a parallel process of the same search may be reading it
    rundir.write_bytes(search_dir / SAVED, yaml.safe_dump(spec, sort_keys=False).encode())


def read_saved(search_dir: Path) -> dict | None:
    """The settings search.yaml holds; None when there is none; DamagedFile when it is not a search's settings."""
    path = Path(search_dir) / SAVED
    way_out = "move it away (or the whole folder) or pick a new --dir"
    try:
        saved = yaml.safe_load(path.read_bytes())
    except FileNotFoundError:
        return None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise rundir.DamagedFile(path, f"cannot be read ({type(e).__name__})", way_out) from None
    if not isinstance(saved, dict) or not set(saved) <= {*SPEC_KEYS, "storage"}:
        raise rundir.DamagedFile(path, "is not a search's settings (a mapping of " + ", ".join(SPEC_KEYS) + ")",
                                 way_out)
    return saved


def _factors(overrides) -> list[str]:
    """The overrides that make the experiment: where and how it runs (data.root, device: RUN_SETTINGS) may
    differ from one machine, or one resume, to the next."""
    return [str(o) for o in overrides or [] if str(o).split("=", 1)[0].lstrip("+~") not in RUN_SETTINGS]


def comparable(key: str, value):
    """What of a setting two searches must agree on: all of it, but only the factors of the overrides."""
    return _factors(value) if key == "overrides" else value

