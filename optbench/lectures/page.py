"""The catalogue page: index.md and a self-contained index.html of every claim judged into one folder."""

import base64
import html
import json
from pathlib import Path

from optbench.lectures.catalogue import CATALOGUE, load, names
from optbench.lectures.measures import QUANTITIES
from optbench.lectures.verdicts import comparison_text, number, verdict_text

def markdown_section(claim: dict, result: dict) -> str:
    label = QUANTITIES[claim["quantity"]][1]
    lines = [f"## {claim['name']}: {verdict_text(result)}", "",
             f"> {' '.join(claim['quote'].split())}", "", f"Lecture file `{claim['lecture']}`. "
             + (f"Condition: {claim['condition']}. " if claim.get("condition") else "")
             + f"Quantity: {label}" + (f" (target {claim['target']:g})" if claim.get("target") else "") + ".", "",
             f"Command: `{result['command']}` ({_took(result)})", "",
             "| group | seeds | mean | interval |", "|---|---|---|---|"]
    lines += [f"| {g['group']} | {g['n']} | {number(g['mean'])} | [{number(g['low'])}, {number(g['high'])}] |"
              for g in result["groups"]]
    lines += [""] + [f"- {comparison_text(r, label)}" for r in result["comparisons"]]
    if result.get("figure"):
        lines += ["", f"![{claim['name']}]({result['figure']})"]
    return "\n".join(lines) + "\n"


def _took(result: dict) -> str:
    load = result.get("load")
    return f"{result['seconds']:.0f} s" + (f", 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after" if load else "")


def summary_rows(claims: list[dict], results: list[dict]) -> list[dict]:
    """One row per claim for the summary table: claim, lecture, verdict, the deciding difference and interval."""
    rows = []
    for claim, result in zip(claims, results):
        c = result["comparisons"]
        rows.append({
            "claim": claim["name"], "lecture": claim["lecture"][:3],
            "prediction": ", ".join(f"{r['a']} {r['op']} {r['b']}" for r in c),
            "quantity": claim["quantity"],
            "difference [interval]": "; ".join(f"{number(r['difference'], True)} [{number(r['low'], True)}, "
                                               f"{number(r['high'], True)}]" for r in c),
            "verdict": verdict_text(result), "seconds": round(result["seconds"]),
        })
    return rows


def write_page(claims: list[dict], results: list[dict], out: Path, title: str) -> list[Path]:
    """index.md and index.html (self-contained: figures as data URIs, html_report's CSS) for every claim given."""
    import pandas as pd

    from optbench import html_report

    table = pd.DataFrame(summary_rows(claims, results))
    md = [f"# {title}", "", _markdown_table(table), ""] + [markdown_section(c, r) for c, r in zip(claims, results)]
    (out / "index.md").write_text("\n".join(md))
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Verdicts</h2>", html_report._table(table)]
    for claim, result in zip(claims, results):
        label = QUANTITIES[claim["quantity"]][1]
        parts += [f'<h2 id="{claim["name"]}">{html.escape(claim["name"])}: {html.escape(verdict_text(result))}</h2>',
                  f"<blockquote>{html.escape(' '.join(claim['quote'].split()))}</blockquote>",
                  f"<p>Lecture file <code>{html.escape(claim['lecture'])}</code>. "
                  + (f"Condition: {html.escape(claim['condition'])}. " if claim.get("condition") else "")
                  + f"Quantity: {html.escape(label)}.</p>",
                  f"<pre>{html.escape(result['command'])}</pre><p>{html.escape(_took(result))}</p>",
                  html_report._table(pd.DataFrame(result["groups"]).drop(columns="values").round(5)),
                  "<ul>" + "".join(f"<li>{html.escape(comparison_text(r, label))}</li>"
                                   for r in result["comparisons"]) + "</ul>"]
        png = out / result["figure"] if result.get("figure") else None
        if png is not None and png.is_file():
            uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="{uri}" alt="{html.escape(claim["name"])}">'
                         f"<figcaption>{html.escape(claim['name'])}</figcaption></figure>")
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{html_report.CSS} blockquote {{ border-left: 4px solid #ccc; margin: 0.5em 0; padding-left: 1em;"
            f" font-style: italic; }}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")
    (out / "index.html").write_text(page, encoding="utf-8")
    return [out / "index.md", out / "index.html"]


def _markdown_table(table) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def collect(out: Path, catalogue: Path = CATALOGUE):
    """(claims, results) of every claim with a verdict.json below `out`, in catalogue order: the page covers
    every claim run into this folder so far, not only those of the last command."""
    claims, results = [], []
    for name in names(catalogue):
        path = out / name / "verdict.json"
        if path.is_file():
            claims.append(load(name, catalogue))
            results.append(json.loads(path.read_text()))
    return (claims, results) if claims else None

