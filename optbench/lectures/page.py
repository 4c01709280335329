"""The catalogue page (index.md and a self-contained index.html of every claim judged into one folder) and the
handout per claim: the quotation, the experiment in two lines, the figure, the verdict with its condition, the
design review and why a lecture's setting may give another result."""

import base64
import html
import json
from pathlib import Path

from optbench.lectures.catalogue import CATALOGUE, load, names
from optbench.lectures.measures import QUANTITIES
from optbench.lectures.verdicts import comparison_text, number, verdict_text


def _quote(claim: dict) -> str:
    return " ".join(claim["quote"].split())


def _label(claim: dict) -> str:
    label = QUANTITIES[claim["quantity"]][1]
    return label + (f" (target {claim['target']:g})" if claim.get("target") else "")


def experiment_lines(claim: dict, result: dict) -> list[str]:
    """The experiment in two lines: what is trained and what decides; the condition it holds under."""
    seeds = max((g["n"] for g in result["groups"]), default=None)
    combine = {"all": " (all must hold)", "any": " (one suffices, Holm-corrected)"}[claim["combine"]]
    return [f"Trains {', '.join(claim['groups'])} on MNIST" + (f", {seeds} seeds each" if seeds else "")
            + f"; decided on the {_label(claim)}; predicted: " + _predictions(claim)
            + (combine if len(claim["predict"]) > 1 else "") + ".", f"Condition: {result['condition']}."]


def _predictions(claim: dict) -> str:
    return ", ".join(f"{a} {op} {b}" for a, op, b in claim["predict"])


def markdown_section(claim: dict, result: dict) -> str:
    lines = [f"## {claim['name']}: {verdict_text(result)}", "", f"> {_quote(claim)}", "",
             f"**Verdict at the {result['scale']} scale:** {verdict_text(result)}. "
             f"**Condition:** {result['condition']}.", "", experiment_lines(claim, result)[0], "",
             f"Lecture file `{claim['lecture']}`. Handout: [{claim['name']}/handout.md]({claim['name']}/handout.md). "
             f"Command: `{result['command']}` ({_took(result)})", ""]
    if result["groups"]:
        lines += ["| group | seeds | mean | interval |", "|---|---|---|---|"]
        lines += [f"| {g['group']} | {g['n']} | {number(g['mean'])} | [{number(g['low'])}, {number(g['high'])}] |"
                  for g in result["groups"]]
        lines += [""] + [f"- {comparison_text(r, _label(claim))}" for r in result["comparisons"]]
    if result.get("figure"):
        lines += ["", f"![{claim['name']}]({result['figure']})"]
    return "\n".join(lines) + "\n"


def handout(claim: dict, result: dict) -> str:
    """One claim's page for a lecturer to use as is (out/<claim>/handout.md, its figure beside it)."""
    lines: list[str | None] = [f"# {claim['description'] or claim['name']}", "", f"> {_quote(claim)}", ">",
             f"> lecture file `{claim['lecture']}`", "",
             "**The experiment.** " + "  \n".join(experiment_lines(claim, result)), ""]
    if result.get("figure"):
        lines += [f"![{claim['name']}]({Path(result['figure']).name})", ""]
    lines += [f"**Verdict at the {result['scale']} scale: {verdict_text(result)}**, under the condition above.", ""]
    lines += [f"- {comparison_text(r, _label(claim))}" for r in result["comparisons"]]
    lines += ["" if result["comparisons"] else None,
              f"**How the experiment was designed.** {' '.join(claim.get('design', '').split())}", "",
              f"**Why your setting may give another result.** {' '.join(claim.get('differs', '').split())}", "",
              f"Reproduce: `{result['command']}` ({_took(result)})."]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _differences(comparisons: list[dict]) -> str:
    return "; ".join(f"{number(r['difference'], True)} [{number(r['low'], True)}, {number(r['high'], True)}]"
                     for r in comparisons)


def _took(result: dict) -> str:
    load = result.get("load")
    return f"{result['seconds']:.0f} s" + (
        f", 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after" if load else "")


def summary_rows(claims: list[dict], results: list[dict]) -> list[dict]:
    """One row per claim for the summary table: claim, lecture, verdict, the deciding difference and interval."""
    return [{"claim": claim["name"], "lecture": claim["lecture"][:3], "prediction": _predictions(claim),
             "quantity": claim["quantity"], "difference [interval]": _differences(result["comparisons"]) or "-",
             "verdict": verdict_text(result), "scale": result["scale"], "seconds": round(result["seconds"])}
            for claim, result in zip(claims, results)]


def write_page(claims: list[dict], results: list[dict], out: Path, title: str) -> list[Path]:
    """index.md and index.html (self-contained: figures as data URIs, html_report's CSS) for every claim given."""
    import pandas as pd

    from optbench.results import html as html_report

    table = pd.DataFrame(summary_rows(claims, results))
    linked = table.assign(claim=[f"[{n}]({n}/handout.md)" for n in table.claim])
    md = [f"# {title}", "", _markdown_table(linked), ""] + [markdown_section(c, r) for c, r in zip(claims, results)]
    (out / "index.md").write_text("\n".join(md))
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Verdicts</h2>", html_report._table(table)]
    for claim, result in zip(claims, results):
        parts += _html_section(claim, result, out)
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{html_report.CSS} blockquote {{ border-left: 4px solid #ccc; margin: 0.5em 0; padding-left: 1em;"
            f" font-style: italic; }}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")
    (out / "index.html").write_text(page, encoding="utf-8")
    return [out / "index.md", out / "index.html"]


def _html_section(claim: dict, result: dict, out: Path) -> list[str]:
    import pandas as pd

    from optbench.results import html as html_report

    name = html.escape(claim["name"])
    parts = [f'<h2 id="{name}">{name}: {html.escape(verdict_text(result))}</h2>',
             f"<blockquote>{html.escape(_quote(claim))}</blockquote>",
             f"<p><strong>Verdict at the {html.escape(result['scale'])} scale:</strong> "
             f"{html.escape(verdict_text(result))}. "
             f"<strong>Condition:</strong> {html.escape(result['condition'])}.</p>",
             f"<p>{html.escape(experiment_lines(claim, result)[0])}</p>",
             f"<p>Lecture file <code>{html.escape(claim['lecture'])}</code>. "
             f'<a href="{name}/handout.md">Handout</a>.</p>',
             f"<pre>{html.escape(result['command'])}</pre><p>{html.escape(_took(result))}</p>"]
    if result["groups"]:
        parts += [html_report._table(pd.DataFrame(result["groups"]).drop(columns=["values", "seeds"]).round(5)),
                  "<ul>" + "".join(f"<li>{html.escape(comparison_text(r, _label(claim)))}</li>"
                                   for r in result["comparisons"]) + "</ul>"]
    png = out / result["figure"] if result.get("figure") else None
    if png is not None and png.is_file():
        uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<figure><img src="{uri}" alt="{name}"><figcaption>{name}</figcaption></figure>')
    return parts


def _markdown_table(table) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def scales_table(folders: list[Path], catalogue: Path = CATALOGUE) -> str:
    """Markdown: one row per claim of the catalogue, for each folder (one per scale) its verdict, difference and
    interval and time, and whether the verdict changes between them: a change is itself a lesson."""
    found = [_verdicts(Path(f), catalogue) for f in folders]
    heads = [next((r["scale"] for r in results.values()), Path(f).name) + f" ({Path(f).name})"
             for f, results in zip(folders, found)]
    lines = ["| claim | " + " | ".join(f"{h}: verdict | difference [interval] | time" for h in heads) + " | changes |",
             "|---|" + "---|---|---|" * len(folders) + "---|"]
    for name in names(catalogue):
        cells, verdicts = [], []
        for results in found:
            result = results.get(name)
            if result is None:
                cells += ["not run", "", ""]
                continue
            verdicts.append(result["verdict"])
            cells += [verdict_text(result), _differences(result["comparisons"]), f"{result.get('seconds', 0):.0f} s"]
        changes = " -> ".join(verdicts) if len(set(verdicts)) > 1 else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {changes} |")
    return "\n".join(lines) + "\n"


def collect(out: Path, catalogue: Path = CATALOGUE) -> tuple[list[dict], list[dict]] | None:
    """(claims, results) of every claim with a verdict.json below `out`, in catalogue order: the page covers
    every claim run into this folder so far, not only those of the last command."""
    found = _verdicts(out, catalogue)
    return ([load(name, catalogue) for name in found], list(found.values())) if found else None


def _verdicts(folder: Path, catalogue: Path) -> dict:
    """claim -> its verdict.json in `folder`, for every claim of the catalogue that has one, in catalogue order."""
    # condition and scale default for the verdicts written before they were kept
    return {name: {"condition": "", "scale": "default", **json.loads(path.read_text())} for name in names(catalogue)
            if (path := folder / name / "verdict.json").is_file()}
