"""Benchmark suites: every suite builds a run for every family it names, with its settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worldflux.core.exceptions import ConfigError
from worldflux.nn.blocks import ChannelNorm
from worldflux.training.run import build_trainer
from worldflux.training.run_config import parse_overrides
from worldflux.training.suites import SUITES, get_suite, suite_overrides

ENVS = {"dmc_proprio": "dmc:cartpole-balance", "dmc_vision": "dmc:cartpole-balance",
        "dmc_proprio_cpu": "dmc:cartpole-balance", "atari100k": "atari:Pong"}  # fmt: skip
TINY = ["steps=4", "progress=false", "tensorboard=false", "eval_every=0"]
PIXELS = {"dmc_vision", "atari100k"}  # small frames keep the image runs fast
CASES = [(name, family) for name, suite in SUITES.items() for family in suite.families]


@pytest.mark.parametrize(("suite", "family"), CASES)
def test_every_suite_builds_a_run(tmp_path: Path, suite: str, family: str) -> None:
    model = f"{family}:debug"
    small = suite in PIXELS and family == "dreamerv3"  # TD-MPC2's pixel encoder needs 64x64
    items = suite_overrides(suite, model, TINY + (["env.size=[16,16]"] if small else []))
    trainer = build_trainer(parse_overrides(model, ENVS[suite], items), tmp_path / "run")
    try:
        env = trainer.source.runner.envs[0]
        assert getattr(env, "action_repeat", None) == get_suite(suite).action_repeat or (
            suite == "atari100k"  # ALE skips frames itself (frame_skip = the repeat)
        )
        assert trainer.train()["step"] == 4
    finally:
        trainer.source.close()


def test_tdmpc2_dmc_settings_match_the_official_code(tmp_path: Path) -> None:
    items = suite_overrides("dmc_proprio", "tdmpc2:debug", TINY)
    trainer = build_trainer(
        parse_overrides("tdmpc2:debug", "dmc:cartpole-balance", items), tmp_path
    )
    try:
        config = trainer.config
        assert (config.seed_steps, config.seed_updates, config.eval_episodes) == (2500, 2500, 10)
        assert trainer.agent.model.config.discount == pytest.approx(0.99)  # 500 agent steps
    finally:
        trainer.source.close()


def test_command_items_win_over_the_suite() -> None:
    items = suite_overrides("dmc_proprio", "tdmpc2:1m", ["seed_steps=100"])
    assert parse_overrides("tdmpc2:1m", "dmc:cartpole-balance", items).trainer["seed_steps"] == 100


def test_unknown_suite_and_family_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"suite: expected one of \['atari100k'"):
        get_suite("dmc")
    with pytest.raises(ConfigError, match="'atari100k' has no settings for 'jepa'"):
        suite_overrides("atari100k", "jepa:debug", [])


def test_dreamerv3_suite_uses_the_official_code_values(tmp_path: Path) -> None:
    items = suite_overrides("dmc_proprio", "dreamerv3:debug", TINY)
    trainer = build_trainer(
        parse_overrides("dreamerv3:debug", "dmc:cartpole-balance", items), tmp_path
    )
    try:
        model = trainer.agent.model
        cfg = model.config
        assert (cfg.kl_dyn_scale, cfg.cont_discount_target, cfg.repval_scale) == (1.0, True, 0.3)
        assert (cfg.optimizer, cfg.norm_eps) == ("laprop", 1e-4)
        eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.RMSNorm | ChannelNorm)}
        assert eps == {1e-4}  # every norm layer, the GRU's and the CNN's included
    finally:
        trainer.source.close()


def test_the_cli_takes_a_suite(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from worldflux.cli import app
    from worldflux.training.run_config import read_run_file

    run = tmp_path / "run"
    args = ["train", "tdmpc2:debug", "--env", "dmc:cartpole-balance", "--suite", "dmc_proprio",
            "--run-dir", str(run), "steps=2", *TINY[1:]]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    config = read_run_file(run)
    assert config.env["action_repeat"] == 2 and config.trainer["seed_updates"] == 2500
    bad = CliRunner().invoke(app, [*args[:5], "--suite", "dmc", "--run-dir", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "suite: expected one of" in bad.output
