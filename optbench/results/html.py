"""`optbench report DIR --html`: one self-contained HTML page of a sweep.

Figures are embedded as base64 PNG data URIs and the CSS is inline, so the
file opens offline, can be mailed or archived, and makes no request at all.
"""

import base64
import html
import io
import shlex
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from optbench.results import as_text, format_ranking, run_flags

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0; max-width: 100%; }
/* cells break between words (and after every comma, see _table) rather than widen the page past the window */
th, td { border: 1px solid #ccc; padding: 0.2em 0.4em; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
pre { background: #f4f4f4; padding: 0.6em; white-space: pre-wrap; word-break: break-all; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
figcaption { font-size: 0.95em; color: #444; max-width: 60em; }
"""

# figure name (as `optbench plot` writes it) -> (heading in the page, what the figure shows)
FIGURES = {
    "learning_curves": ("Learning curves", "Training loss per step (smoothed), validation loss and accuracy, and test "
                        "accuracy at each evaluation; a line per group is the mean over its seeds, the band their "
                        "minimum to maximum."),
    "gradient_norms": ("Gradient norms", "The global gradient norm per step (before clipping), then each layer's: "
                       "vanishing or exploding gradients show as layers far below or above the others."),
    "learning_rates": ("Learning rates", "The learning rate each step used, as recorded by the optimizer (schedules "
                       "and warm-up included)."),
    "final_metrics": ("Final metrics", "Best validation accuracy and the test accuracy at that evaluation, per run "
                      "(dots) and per group (box: median and quartiles)."),
    "lr_sensitivity": ("Learning-rate sensitivity", "Best validation accuracy against the learning rate, mean over "
                       "seeds with bars from minimum to maximum: how narrow the good range is."),
    "activations": ("Activation statistics", "Per hidden layer, on a fixed batch of validation images over training: "
                    "activation mean and spread, the spread of the gradients, and saturated or dead units."),
    "histograms_act": ("Activation histograms", "The distribution of each hidden layer's activations at the start, "
                       "middle and end of training, an outline per group."),
    "histograms_grad": ("Gradient histograms", "The distribution of each hidden layer's gradients dL/d(pre-activation) "
                        "at the start, middle and end of training, each layer on its own scale, fractions on a log "
                        "axis."),
    "differences": ("Differences with their intervals", "Each group's difference in best validation accuracy from "
                    "the reference, with its t-interval at the level Holm's correction tested it at; filled: resolved "
                    "by the test, open: not resolved."),
    "rank_over_seeds": ("Rank within each seed", "How often each group takes each rank when the groups are compared "
                        "seed by seed: a stable ranking puts its weight on the diagonal."),
    "tuning_cost": ("Tuning cost: expected best of n trials", "The expected best validation accuracy after n trials "
                    "drawn from each group's runs (Dodge et al. 2019): which group looks best can depend on the "
                    "tuning budget."),
}
RUN_COLUMNS = ("run", "status", "seed", "best_val_acc", "test_acc_at_best_val", "final.train_loss", "wall_time",
               "health flags")


def sweep_commands(runs) -> list[str]:
    """The `optbench train` command lines that produced `runs`, read from Hydra's records.

    A sweep's multirun.yaml holds the overrides as typed (`optimizer=sgd,adam`); a single run's .hydra/overrides.yaml
    holds its own. Runs found in neither contribute nothing: the page then says the command is unknown.
    """
    commands: dict[str, None] = {}  # in order of appearance, once each
    for run_dir in map(Path, runs["run_dir"]):
        multirun = next((p / "multirun.yaml" for p in run_dir.parents if (p / "multirun.yaml").exists()), None)
        if multirun is not None:
            overrides = OmegaConf.load(multirun).hydra.overrides
            hydra_args = [o for o in overrides.hydra if not o.startswith("hydra.mode=")]
            line = ["optbench", "train", "-m", *overrides.task, *hydra_args]
        elif (run_dir / ".hydra" / "overrides.yaml").exists():
            line = ["optbench", "train", *OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
        else:
            continue
        commands[shlex.join(str(part) for part in line)] = None
    return list(commands)


def png_data_uri(fig) -> str:
    from optbench.results.plots import DPI

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def config_tables(runs, by: list[str]):
    """(per group: the config keys that vary across runs; the config every run shares), as DataFrames."""
    import pandas as pd

    columns = runs.attrs.get("config_columns") or []
    text = as_text(runs[columns]) if columns else pd.DataFrame(index=runs.index)
    varied = [c for c in columns if text[c].nunique() > 1]
    shared = pd.DataFrame({"key": [c for c in columns if c not in varied]})
    shared["value"] = [text[c].iloc[0] for c in shared["key"]]

    def values(column):
        return ", ".join(dict.fromkeys(column))  # in order of appearance, once each

    keys = by + [c for c in varied if c not in by]
    groups = text[keys].groupby(by, sort=False) if by else [((), text[keys])]
    rows = [{**{k: values(g[k]) for k in keys}, "runs": len(g)} for _, g in groups]
    return pd.DataFrame(rows, columns=[*keys, "runs"]), shared


def run_table(runs):
    """The runs table of the page: name, status, seed, results and the health flags each run raised."""
    table = runs.assign(**{"health flags": run_flags(runs)})
    return table[[c for c in RUN_COLUMNS if c in table]].round(4)


def _table(frame) -> str:
    # a run's folder name (0_optimizer=adam,model.hidden=[256,256],seed=0) is one long word: let it break at commas
    return frame.to_html(index=False, border=0, escape=True, na_rep="").replace(",", ",<wbr>")


def build(runs, ranking, figures: dict, commands: list[str], title: str = "optbench report",
          notes: Sequence[str] = (), tuning=None) -> str:
    """The page: ranking (results.rank's table), how sure it is (`notes`: results.verdict_lines), the
    tuning cost table (results.tuning_cost), figures, config per group, the producing command."""
    by, tuned = ranking.attrs["by"], ranking.attrs["tuned"]
    statuses = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
    grouped = (f"grouped by {', '.join(by)}" if by else "one group") + (
        f"; {', '.join(tuned)} chosen per group on validation" if tuned else "")
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{len(runs)} runs ({html.escape(statuses)}); "
             f"{html.escape(grouped)}; target validation accuracy {100 * ranking.attrs['target']:g}%.</p>",
             "<h2>Command</h2>"]
    if commands:
        parts += [f"<pre>{html.escape(c)}</pre>" for c in commands]
    else:
        parts.append("<p>The command that produced these runs could not be found "
                     "(no multirun.yaml or .hydra/overrides.yaml next to the runs).</p>")
    parts += ["<h2>Ranking</h2>", _table(as_text(format_ranking(ranking)))]
    if notes:
        parts.append(f"<p>{html.escape(notes[0])}</p><ul>"
                     + "".join(f"<li>{html.escape(line.strip())}</li>" for line in notes[1:]) + "</ul>")
    if tuning is not None:
        parts += ["<h2>Tuning cost</h2>", "<p>Expected best validation accuracy after n trials drawn at random "
                  "from each group's finished runs (Dodge et al. 2019).</p>", _table(as_text(tuning.round(4)))]
    for name, fig in figures.items():
        heading, caption = FIGURES.get(name, (name.replace("_", " ").capitalize(), ""))
        parts += [f"<h2>{html.escape(heading)}</h2>",
                  f'<figure><img src="{png_data_uri(fig)}" alt="{html.escape(heading + ". " + caption)}">'
                  f"<figcaption>{html.escape(caption)} <small>({html.escape(name)}.png in optbench plot)</small>"
                  "</figcaption></figure>"]
    per_group, shared = config_tables(runs, by)
    parts += ["<h2>Configuration of each group</h2>", _table(per_group),
              "<h2>Configuration shared by every run</h2>", _table(shared),
              "<h2>Runs</h2>", _table(as_text(run_table(runs)))]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
