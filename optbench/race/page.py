"""The race's page: one Markdown file and one offline HTML file (inline CSS, figures as data URIs) with the
verdicts, the ledger, the flags, the test set's limit, sensitivity, robustness and the reproducing command."""

import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from optbench.race import budget, robustness
from optbench.results.html import CSS, png_data_uri

if TYPE_CHECKING:  # pandas is imported where a page is made, not when the command starts
    import pandas as pd

LR_KEY = "optimizer.lr"
ZOOM = 0.03  # the lower panel shows the top 3 points of accuracy, where the good regions are told apart


def lr_figure(trials: dict, chosen: dict, epsilon: float):
    """Validation accuracy of every trial against its learning rate, all optimizers on one axis (above: every
    trial, diverged ones as crosses at the bottom; below: the top ZOOM of accuracy), the chosen trial ringed and
    the band within epsilon of it shaded."""
    import pandas as pd
    from matplotlib.figure import Figure

    from optbench.results.plots import DPI, palette

    fig = Figure(figsize=(9, 7.5), dpi=DPI, layout="constrained")
    fig.suptitle("Validation accuracy against learning rate "
                 f"(one dot per trial; ring: chosen; band: within {epsilon:g} of it)")
    full, zoom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.3))
    scores = pd.concat([frame["score"] for frame in trials.values()]).dropna()
    floor, top = (scores.min(), scores.max()) if len(scores) else (0.0, 1.0)
    markers = "osD^vP*X"  # a shape per optimizer too: dots of neighbouring rates overlap
    for i, (colour, (name, frame)) in enumerate(zip(palette(len(trials)), trials.items())):
        if not len(frame):
            continue
        frame = frame.sort_values(LR_KEY)
        ok = frame["score"].notna()
        for ax in (full, zoom):
            ax.plot(frame.loc[ok, LR_KEY], frame.loc[ok, "score"], markers[i % len(markers)], color=colour, ms=5,
                    alpha=0.8, label=name if ax is full else None)
            if name in chosen:
                best = chosen[name]
                ax.plot([best["params"][LR_KEY]], [best["score"]], "o", ms=13, mfc="none", mec=colour, mew=2)
                ax.axhspan(best["score"] - epsilon, best["score"], color=colour, alpha=0.08)
        full.plot(frame.loc[~ok, LR_KEY], [floor] * int((~ok).sum()), "x", color=colour, ms=6)
    zoom.set_ylim(top - ZOOM, top + ZOOM / 10)
    full.set(xscale="log", ylabel="validation accuracy\n(every trial)")
    zoom.set(xscale="log", xlabel="learning rate (log scale)",
             ylabel=f"validation accuracy\n(top {100 * ZOOM:g} points)")
    for ax in (full, zoom):
        ax.grid(alpha=0.3, which="both")
    # below the axes: no trial hidden behind it, and the title keeps the full width
    fig.legend(title="optimizer", fontsize=8, loc="outside lower center", ncols=min(len(trials), 5))
    return fig


def _md_table(frame) -> str:
    if not len(frame):
        return "(none)\n"
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in frame.map(_cell).to_numpy()]
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        x = float(v)
        if not np.isfinite(x):
            return "" if np.isnan(x) else str(x)
        return f"{x:.3g}" if abs(x) >= 1e5 else f"{x:.4g}"
    return str(v)


def verdict_lines(verdicts, limits) -> list[str]:
    """The sentences a reader needs: each comparison with the leader, resolved or not, beside the test set's limit."""
    lines = []
    limit = dict(zip(limits["other"], limits["resolvable"]))
    for _, v in verdicts.iterrows():
        interval = (f"{100 * (1 - v['interval_alpha']):.1f}% interval "
                    f"[{100 * v['low']:+.2f}, {100 * v['high']:+.2f}] points")
        test_limit = limit.get(v["other"], np.nan)
        tail = f"; this test set resolves differences of {100 * test_limit:.2f} points or more between these two models"
        if v["resolved"] and abs(v["difference"]) < test_limit:
            tail += (": the difference holds on average over seeds, yet two single models this far apart could not "
                     "be told apart on these 10,000 images")
        if v["resolved"]:
            lines.append(f"{v['leader']} beats {v['other']} by {100 * v['difference']:.2f} points of test accuracy "
                         f"(resolved at {v['seeds']} seeds; {interval})" + tail)
        else:
            lines.append(f"{v['leader']} vs {v['other']}: not resolved after {v['seeds']} seeds (the cap): difference "
                         f"{100 * v['difference']:+.2f} points, {interval}; a difference up to "
                         f"{100 * v['could_hide']:.2f} points could still hide there" + tail)
    return lines


def sections(r: dict) -> list[tuple[str, str, "pd.DataFrame | None"]]:
    """(heading, text, table) in page order, from the race's results `r` (command.finish builds it)."""
    s = r["settings"]
    flags = "; ".join(f"{n}: {k} = {c['params'][k]:.4g} at the {side} edge of its range"
                      for n, c in r["chosen"].items() for k, side in c["edges"].items())
    if not flags:
        chosen = "No chosen value lies at the edge of its range."
    elif s["extend_edges"]:
        chosen = f"Still at an edge after the extension: {flags}."
    else:
        chosen = f"Under-tuned: {flags} (rerun with --extend-edges)."
    if s["extend_edges"]:
        extended = [f"{n} ({', '.join(f'{k} {side}' for k, side in c['edges_before_extension'].items())})"
                    for n, c in r["chosen"].items() if c["edges_before_extension"]]
        chosen += (" --extend-edges gave every optimizer the same extra trials (study 'extra'); a log range whose "
                   "first choice was at an edge was widened by a decade on that side (other ranges keep their bounds, "
                   "which mean something: a momentum below 1, a warm-up within the run). At an edge in the first "
                   "studies: " + (", ".join(extended) or "none was") + ".")
    unequal = budget.unequal(r["ledger"])
    last = r["looks"]["seeds"].iloc[-1]
    stopped = (f"the race stopped at {last} seeds, every comparison with the leader resolved."
               if r["verdicts"]["resolved"].all() else
               f"the race stopped at the cap, {last} seeds, with comparisons unresolved.")
    shapes = (robustness.words(r["shapes"], "tau_vs_first", "the model") if r["shapes"] is not None else
              "Not measured: give --shapes '[64];[256,256]' to rerun the chosen configurations on other models.")
    return [
        ("Command", "Reproduces (and resumes) this race:", None),
        ("Verdicts", "\n".join(f"- {line}" for line in r["verdict_lines"]) + "\n\nThe seed-to-seed interval "
         "(would another seed give the same difference?) and the test set's limit (can these 10,000 images tell "
         "these two models apart?) answer different questions: never read one as the other. Looks were declared "
         f"at {', '.join(map(str, r['counts']))} seeds, each at its O'Brien-Fleming share of alpha = {s['alpha']} "
         f"(Holm over all pairs within a look); {stopped}", r["verdicts"]),
        ("Looks", "The verdict after each round of seeds.", r["looks"]),
        ("Budget ledger", "Every optimizer got the same tuning budget; FLOPs are 6 x parameters x batch x steps. "
         + ("NOT EQUAL: " + "; ".join(unequal) if unequal else "Equal in trials and steps."), r["ledger"]),
        ("Chosen configurations", "Best trial on validation (tuning seed 0); AlgoPerf's score is the median over "
         "studies of each study's best. " + chosen, r["chosen_table"]),
        ("The test set's limit", "Exact McNemar test over the 10,000 test images, the leader's first seed run "
         "against each other's (`resolvable`: the smallest accuracy difference this pair's disagreements allow "
         f"to resolve at alpha {s['alpha']}).", r["limits"]),
        ("Sensitivity", f"Good region: trials within epsilon = {s['epsilon']} of the optimizer's best (validation). "
         "width_decades: learning rates it spans; share_within_eps: of the trials (quasi-random over the space); "
         "trials_to_eps: expected trials to land there (expected best of n).", r["sensitivity"]),
        ("Robustness: earlier checkpoints",
         robustness.words(r["checkpoints"], "tau_vs_end", "the checkpoint it is read at"), r["checkpoints"]),
        ("Robustness: relaxed targets", robustness.words(r["targets"], "tau_vs_base", "the target"), r["targets"]),
        ("Robustness: model shapes", shapes + " Final test accuracy, mean over the first round's seeds; "
         "the configurations chosen on the race's model, not re-tuned.", r["shapes"]),
    ]


def markdown(r: dict) -> str:
    parts = [f"# Optimizer race: {', '.join(r['settings']['optimizers'])}\n",
             f"Race directory `{r['dir']}`; every run directory named below is relative to it. This invocation took "
             f"{r['wall_time']:.0f} s; the race's runs took {r['ledger']['wall_time_s'].sum():.0f} s in all "
             "(the ledger's wall time, over every invocation).\n"]
    for heading, text, table in sections(r):
        parts.append(f"## {heading}\n\n{text}\n")
        if heading == "Command":
            parts.append(f"```\n{r['command']}\n```\n")
        if heading == "Sensitivity":
            parts.append("![accuracy against learning rate](lr.png)\n")
        if table is not None:
            parts.append(_md_table(table))
    return "\n".join(parts)


def write_html(r: dict, fig) -> str:
    parts = [f"<h1>Optimizer race: {html.escape(', '.join(r['settings']['optimizers']))}</h1>",
             f"<p>Race directory <code>{html.escape(str(r['dir']))}</code>; this invocation took "
             f"{r['wall_time']:.0f} s; the race's runs took {r['ledger']['wall_time_s'].sum():.0f} s in all.</p>"]
    for heading, text, table in sections(r):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        lines = text.split("\n")
        items = [line[2:] for line in lines if line.startswith("- ")]
        rest = " ".join(line for line in lines if line and not line.startswith("- "))
        if items:
            parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        parts.append(f"<p>{html.escape(rest)}</p>")
        if heading == "Command":
            parts.append(f"<pre>{html.escape(r['command'])}</pre>")
        if heading == "Sensitivity":
            parts.append(f'<figure><img src="{png_data_uri(fig)}" alt="accuracy against learning rate"></figure>')
        if table is not None and len(table):
            parts.append(table.map(_cell).to_html(index=False, border=0, escape=True))
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>optbench race</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def save(race_dir: Path, r: dict) -> None:
    fig = lr_figure(r["trials"], r["chosen"], r["settings"]["epsilon"])
    fig.savefig(race_dir / "lr.png")
    (race_dir / "race.md").write_text(markdown(r))
    (race_dir / "race.html").write_text(write_html(r, fig))
