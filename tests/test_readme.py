"""Every example in the README runs as written: the Python blocks, and every shell command.

Shell commands run in order (train before eval) in a fresh directory. The long ones keep their
README text and get budget options appended (`BUDGET`): for the CLI the last value of an option
or ``key=value`` override wins, so a 15,000-step command runs 60 steps here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

README = Path(__file__).resolve().parents[1] / "README.md"
MAKEFILE = README.parent / "Makefile"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
SHELL = re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S)

_TINY = ["steps=60", "seed_steps=50", "eval_every=0", "progress=false", "tensorboard=false"]
# command prefix -> what is appended; the first matching prefix applies
BUDGET = {
    "worldflux train tdmpc2:": [*_TINY, "updates_per_step=0.05", "agent.batch_size=16"],
    "worldflux train dreamerv3:": [*_TINY, "updates_per_step=0.02", "agent.batch_size=4"],
    "worldflux demo": ["--steps", "60"],
    "worldflux eval": ["--episodes", "1"],
    "worldflux imagine": ["--length", "12"],
    "worldflux resume": ["--steps", "80"],
}


def shell_commands() -> list[str]:
    """The README's shell commands, comments dropped, ``\\`` continuations joined."""
    commands = []
    for block in SHELL:
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("#", 1)[0].strip()
            if command:
                commands.append(" ".join(command.split()))
    return commands


def test_readme_has_examples() -> None:
    assert BLOCKS, "README lost its Python examples"
    assert any(c.startswith("worldflux train") for c in shell_commands())


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("worldflux.models.tdmpc2")
    monkeypatch.chdir(tmp_path)  # the examples write runs/ into the current directory
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})


def test_readme_make_targets_exist() -> None:
    """`make X` lines: the target exists; `make demo` runs `worldflux demo` (run below)."""
    makefile = MAKEFILE.read_text()
    for command in shell_commands():
        if command.startswith("make "):
            target = command.split()[1]
            assert re.search(rf"^{target}:", makefile, flags=re.M), f"no make target {target}"
    assert re.search(r"^demo:.*\n\t\S*worldflux demo$", makefile, flags=re.M)


def test_readme_shell_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worldflux.cli import app

    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    commands = [c for c in shell_commands() if c.startswith("worldflux ")]
    assert commands, "README lost its worldflux commands"
    for command in commands:
        args = shlex.split(command)[1:]
        args += next((v for k, v in BUDGET.items() if command.startswith(k)), [])
        result = runner.invoke(app, args, terminal_width=200)
        assert result.exit_code == 0, f"README command failed: {command}\n{result.output}"
