"""Every ``bash`` block of README.md runs as written (issue: the README walk must not rot).

The README's fenced ``bash`` blocks are extracted in order and run, command by command, in one
temporary project folder with ``../shared`` (the real samples) and ``configs/`` beside it, so
later blocks see what earlier ones wrote (the archive walk). ``s12mae`` commands run in-process
(one import of torch); the two setup commands (``python3 -m venv ...``) are what CI itself runs
and are skipped here. Illustrations that need what a test cannot have (a GPU cluster, a file you
download) are fenced as ``text``, not ``bash``.

The only change made to a command is appending the size options of :data:`SIZE_OPTIONS` to keep
the run short; they are listed here, in one place, on purpose.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from s12mae.cli import main

ROOT = Path(__file__).resolve().parents[1]

# Appended to every command of that subcommand (later flags override earlier ones).
SIZE_OPTIONS: dict[str, list[str]] = {
    "simulate": ["--sim.num_samples", "16"],
    "pretrain": ["--train.steps", "2", "--train.batch_size", "4", "--train.checkpoint_every", "2",
                 "--train.progress", "false", "--data.simulated.num_samples", "16"],
    "evaluate": ["--fit.steps", "2", "--data.num_train", "8", "--data.num_val", "4", "--data.num_test", "4",
                 "--progress", "false"],
    "table": ["--run.fit.steps", "2", "--seeds", "[0]", "--scenarios", "[frozen]", "--tasks", "[sen1floods11]",
              "--run.data.num_train", "8", "--run.data.num_val", "4", "--run.data.num_test", "4",
              "--run.progress", "false"],
    "demo": ["--steps", "2", "--num_samples", "16", "--eval_steps", "2", "--eval_scenes", "12", "--seeds", "1"],
    "robustness": ["--run.fit.steps", "2", "--seeds", "[0]", "--shifts", "[0, 4]", "--clouds", "[0, 0.25]",
                   "--run.data.num_train", "8", "--run.data.num_val", "4", "--run.data.num_test", "4",
                   "--run.progress", "false"],
}
SKIP_PREFIXES = ("python3 -m venv",)


def readme_commands(text: str) -> list[str]:
    """The commands of the ``bash`` blocks of ``text``, continuation lines joined, comments dropped."""
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if line and not line.startswith(SKIP_PREFIXES):
                commands.append(line)
    return commands


def test_readme_commands_are_found():
    commands = readme_commands((ROOT / "README.md").read_text())
    assert any(c.startswith("s12mae pair") for c in commands)
    assert any(c.startswith("s12mae pretrain") for c in commands)
    assert all(c.startswith("s12mae ") for c in commands), [c for c in commands if not c.startswith("s12mae ")]


def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, capsys):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the README's walk reads the shared real samples")
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    (project / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    monkeypatch.chdir(project)
    for command in readme_commands((ROOT / "README.md").read_text()):
        argv = shlex.split(command)[1:]
        argv += SIZE_OPTIONS.get(argv[0], [])
        print("README command:", command, flush=True)
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, f"README command failed: {command}\n{err[-2000:]}"
