"""mkdocs hook: the reference pages' bodies, generated at build time from the sources of truth, never copied.

A page asks for a generated part with a marker line of its own:

    <!-- generated: config -->   every config group and option, as `optbench list` reads them (the first comment
                                 line of each option file is its help), with every key's default and the comment
                                 above it, from the YAML files in optbench/conf/
    <!-- generated: cli -->      `optbench --help`, then every subcommand's `optbench <command> --help`, each called
                                 in this process through optbench.cli.main and captured

Nothing here names a module inside optbench beyond the entry point (`optbench.cli.main`) and the package itself
(where conf/ lives), so the pages follow the code as it is redesigned.
"""

import html
import io
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import yaml

MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.M)


def optbench_output(*args: str) -> str:
    """stdout of `optbench <args>`, run in this process; a non-zero exit fails the build."""
    from optbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(args))
    except SystemExit as e:  # argparse's --help, should main() ever let it through
        code = e.code or 0
    if code != 0:
        raise RuntimeError(f"optbench {' '.join(args)} exited {code}: {err.getvalue()[-2000:]}")
    return out.getvalue()


def conf_dir() -> Path:
    import optbench

    return Path(optbench.__file__).parent / "conf"


def listed_options() -> dict[str, dict[str, str]]:
    """group -> option -> help, parsed from what `optbench list` prints (`group:` then `  option   help`)."""
    groups: dict[str, dict[str, str]] = {}
    group = None
    for line in optbench_output("list").splitlines():
        if re.fullmatch(r"\S+:", line):
            group = line[:-1]
            groups[group] = {}
        elif line.startswith("  ") and group:
            option, _, help_text = line.strip().partition(" ")
            groups[group][option] = help_text.strip()
    if not groups:
        raise RuntimeError("`optbench list` printed no groups")
    return groups


def yaml_keys(path: Path) -> list[tuple[str, object, str]]:
    """(key, default, help) for each top-level key of a YAML file; help: the comment lines just above the key
    (not the file's opening comment, which is the option's own help)."""
    values = yaml.safe_load(path.read_text()) or {}
    rows, comments, seen_body = [], [], False
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            if seen_body and not line.startswith("# @"):
                comments.append(line.lstrip("# ").strip())
            continue
        if not line.strip():
            comments = []
            continue
        seen_body = True
        match = re.match(r"^([A-Za-z_][\w.]*)\s*:", line)
        if match and match.group(1) in values:
            rows.append((match.group(1), values[match.group(1)], " ".join(comments)))
        if not line.startswith((" ", "-")):
            comments = []
    return rows


def cell(text: str) -> str:
    """Plain text in a Markdown table cell: shown as written (lr*wd*w stays, not italics)."""
    text = re.sub(r"([\\`*_\[\]|])", r"\\\1", text.replace("\n", " "))
    return text.replace("<", "&lt;").replace(">", "&gt;")


def value_text(value) -> str:
    if isinstance(value, (dict, list)):
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    else:
        text = yaml.safe_dump(value).strip().removesuffix("...").strip()
    return f"`{text}`" if "`" not in text and "|" not in text else f"<code>{html.escape(text).replace('|', '&#124;')}</code>"


def key_table(rows) -> str:
    if not rows:
        return "_No keys of its own._\n"
    lines = ["| key | default | what it does |", "| --- | --- | --- |"]
    lines += [f"| `{key}` | {value_text(value)} | {cell(help_text)} |" for key, value, help_text in rows]
    return "\n".join(lines) + "\n"


def config_reference() -> str:
    conf = conf_dir()
    parts = ["## Top-level keys\n",
             "The keys of `conf/config.yaml` itself (`seed=3`, `device=cuda`); its `defaults` list picks one option "
             "of each group below.\n",
             key_table([r for r in yaml_keys(conf / "config.yaml") if r[0] not in ("defaults", "hydra")])]
    for group, options in listed_options().items():
        parts.append(f"## {group}\n")
        parts.append(f"Choose with `{group}=<option>`; {len(options)} options in `optbench/conf/{group}/`.\n")
        parts.append("| option | what it is |\n| --- | --- |\n" + "".join(
            f"| [`{option}`](#{group}-{option.replace('_', '-')}) | {cell(help_text)} |\n"
            for option, help_text in options.items()))
        for option, help_text in options.items():
            path = conf / group / f"{option}.yaml"
            parts.append(f"### {group}={option} {{ #{group}-{option.replace('_', '-')} }}\n")
            parts.append(f"{help_text}\n")
            parts.append(key_table([r for r in yaml_keys(path) if r[0] != "defaults"]) if path.is_file()
                         else f"_(from another folder: {path})_\n")
    return "\n".join(parts)


def subcommands(usage: str) -> list[str]:
    """The command names of `optbench --help`'s `commands:` section (lines indented by exactly two spaces)."""
    section = usage.split("commands:", 1)[1].split("\n\n", 1)[0]
    return [m.group(1) for m in re.finditer(r"^  ([a-z]+)\b", section, re.M)]


def cli_reference() -> str:
    usage = optbench_output("--help")
    parts = ["## optbench\n", "`optbench --help`:\n", f"```text\n{usage.rstrip()}\n```\n"]
    for command in subcommands(usage):
        parts.append(f"## optbench {command}\n")
        parts.append(f"`optbench {command} --help`:\n")
        parts.append(f"```text\n{optbench_output(command, '--help').rstrip()}\n```\n")
    return "\n".join(parts)


GENERATORS = {"config": config_reference, "cli": cli_reference}
_cache: dict[str, str] = {}


def on_page_markdown(markdown, page, config, files):
    def generate(match):
        name = match.group(1)
        if name not in GENERATORS:
            raise RuntimeError(f"{page.file.src_path}: unknown generated part {name!r}")
        if name not in _cache:
            _cache[name] = GENERATORS[name]()
        return _cache[name]

    return MARKER.sub(generate, markdown)
