"""Every shell command on the documentation's pages and the README's runs, or says why not.

The commands' rule, the one the pages follow (docs/get-started/install.md says it too):
- every line of a ```bash block is a command (a line ending in a backslash goes on on the next line), except
  comment lines of their own;
- a command ending in `# not run in tests: <reason>` is not run, and the reason must say something (the README's
  two set-up commands, whose form CI reads, are the only others not run here: SETUP);
- every other command must start with `optbench ` and runs here, in process (optbench.cli.main), one temporary
  folder per page, a page's commands in their order, exit status 0, with a tiny budget added by subcommand
  (TINY, before Hydra's flags; a `search` without --space resumes one and gets nothing; `landscape` gets a 5x5
  grid on 500 images; `data` the tests' MNIST folder);
- a `train` command that names no folder gets `hydra.sweep.dir=multirun/cmd<N>` and `hydra.run.dir=outputs/cmd<N>`,
  and the placeholders `multirun/<stamp>` and `outputs/<stamp>` in later commands of that page are that folder.
"""

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO, optbench

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
MARKER = "# not run in tests:"
# the tiny budget every training command gets (added: on Hydra's command line the last value of a key wins): the
# commands are under test, not their numbers; two steps, so a per-step curve is still a line as a reader's is, and
# every run still evaluates at step 0 and at its last step
TINY = ["trainer.max_steps=2", "trainer.eval_every=2", "data.train_eval_size=500", "data.val_size=1000"]
TRAINS = {"train", "search", "gradcheck", "lectures"}  # subcommands whose arguments take training overrides


def bash_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for every command in the ```bash blocks of a Markdown file, continuations joined."""
    commands, block, pending, start = [], False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            block = stripped == "```bash" if not block else False
            continue
        if not block or (not stripped and not pending) or (stripped.startswith("#") and not pending):
            continue  # outside a block, blank, or a comment line of its own
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        commands.append((start, pending + stripped))
        pending = ""
    return commands


COMMANDS = [(path, number, command) for path in DOC_FILES for number, command in bash_commands(path)]
# the README's two set-up commands keep the exact form CI reads (no marker fits there): CI runs the test command
# as it stands, and the first one's `optbench train` is run below from the tour's commands
SETUP = [c for c in COMMANDS if c[0].name == "README.md" and c[2].startswith("python3 -m venv .venv && ")]
RUN = [(path, number, command) for path, number, command in COMMANDS
       if MARKER not in command and (path, number, command) not in SETUP]
PAGES = sorted({path for path, _, _ in RUN})


def test_the_pages_have_commands_and_every_command_runs_or_says_why_not():
    assert len(RUN) >= 15 and len(COMMANDS) > len(RUN)  # the collection found the pages' blocks
    assert len(SETUP) == 2
    for path, number, command in (c for c in COMMANDS if c not in SETUP):
        where = f"{path.relative_to(REPO)}:{number}: {command}"
        if MARKER in command:
            assert len(command.split(MARKER, 1)[1].strip().split()) >= 2, f"{where}: give a reason"
        else:
            assert command.startswith("optbench "), f"{where}: run it in a test, or end it with '{MARKER} <why>'"


def shell_words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def prepared(words: list[str], mnist_root: Path, n: int, stamps: dict) -> list[str]:
    """The command as the test runs it: placeholders filled, the tiny budget and the test's data added."""
    words = [re.sub(r"(multirun|outputs)/<stamp>", lambda m: stamps.get(m.group(1), m.group(0)), w) for w in words]
    assert not any("<" in w and ">" in w for w in words), f"a placeholder without a rule: {words}"
    command = words[1]
    trains = command == "train" and not {"--cfg", "--dry-run", "--help"} & set(words)
    if trains and not any(w.startswith(("hydra.sweep.dir=", "hydra.run.dir=")) for w in words):
        words += [f"hydra.sweep.dir=multirun/cmd{n}", f"hydra.run.dir=outputs/cmd{n}"]
        stamps.update(multirun=f"multirun/cmd{n}", outputs=f"outputs/cmd{n}")
    for w in words:
        if w.startswith("hydra.sweep.dir="):
            stamps["multirun"] = w.split("=", 1)[1]
        elif w.startswith("hydra.run.dir="):
            stamps["outputs"] = w.split("=", 1)[1]
    extra = []
    if command in TRAINS and not (command == "lectures" and words[2:3] not in (["run"], ["report"])):
        extra = [f"data.root={mnist_root}", *TINY]
    if command == "search" and "--space" not in words:
        extra = []  # a search resumed: it keeps the overrides it was started with (the budget among them)
    if extra:
        # before Hydra's own flags (--cfg job): its overrides must be one run of words
        flags = [i for i, w in enumerate(words) if w.startswith("--") and any("=" in x for x in words[2:i])]
        at = flags[0] if command == "train" and flags else len(words)
        words[at:at] = extra
    elif command == "landscape":
        words += ["--points", "5", "--samples", "500"]
    elif command == "data":
        words += ["--root", str(mnist_root)]
    return words[1:]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_commands_on_the_page_run(page, mnist_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stamps: dict = {}
    for n, (_path, number, command) in enumerate(c for c in RUN if c[0] == page):
        args = prepared(shell_words(command), mnist_root, n, stamps)
        out = optbench(*args)
        assert out.returncode == 0, f"{page.name}:{number}: optbench {' '.join(args)}\n{out.stderr[-3000:]}"


