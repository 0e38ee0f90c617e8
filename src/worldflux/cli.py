"""The ``worldflux`` command line: train, eval, imagine, models, resume, demo, data."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from worldflux.cli_data import data_app
from worldflux.cli_run import relaunch, report, run_trainer
from worldflux.core.exceptions import ConfigError, WorldFluxError

app = typer.Typer(
    help="World models for RL: train, evaluate and inspect DreamerV3, TD-MPC2 and JEPA agents.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(data_app, name="data")

DEMO_MODEL = "tdmpc2:1m"
DEMO_ENV = "Pendulum-v1"
# Policy-prior acting and batch 64 keep the demo to a few minutes on 2 cores; see
# docs/training.md for the reference settings (MPPI, batch 256, 1 update per step).
# 5000 steps: evals are still at random level (-1100..-1450) up to 3000, -222 at 4000.
DEMO_STEPS = 5000
DEMO_SETTINGS = [
    f"steps={DEMO_STEPS}", "seed_steps=500", "updates_per_step=0.5", "eval_every=1000",
    "eval_episodes=3", "checkpoint_every=1000", "log_every=250", "agent.act=policy",
    "agent.batch_size=64", "episode_length=200",
]  # fmt: skip


class StartMethod(str, Enum):
    """How collector processes start (``--start-method``)."""

    spawn = "spawn"  # portable: a fresh interpreter per collector (slower start)
    fork = "fork"  # POSIX: a copy of the learner (starts fast)


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _seed_rngs(seed: int) -> None:
    """Seed the global RNGs: agents sample from torch's (MPPI noise), so without this two evals
    of one checkpoint gave different returns."""
    from worldflux.training.config import seed_everything

    seed_everything(seed)


def _check_imagine_steps(context: int, length: int) -> None:
    if context < 1:
        raise ConfigError(f"--context: expected an int >= 1 (real steps to filter), got {context}")
    if length <= context:
        raise ConfigError(
            f"--length: expected more steps than --context={context} (the imagined steps come "
            f"after them), got {length}"
        )


NPROC_HELP = "data-parallel processes on this machine (started with torchrun); 1: this one"


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="family:preset, e.g. dreamerv3:size1m, tdmpc2:1m")],
    env: Annotated[
        str | None,
        typer.Option(
            help="environment id, e.g. CartPole-v1, dmc:walker-walk (optional with "
            "dataset=: then only the data's spaces are used and eval_every=0)"
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="key=value: section.key (model., agent., trainer., env.) or a bare key, "
            "set in the one section that has it (steps=, seed=, batch_size=, horizon=, ...)"
        ),
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="where to write (default runs/<name>)")
    ] = None,
    collectors: Annotated[
        int,
        typer.Option(
            min=0,
            help="collector processes stepping the envs (each num_envs copies); "
            "0: one process (default)",
        ),
    ] = 0,
    start_method: Annotated[
        StartMethod, typer.Option(help="how collector processes start")
    ] = StartMethod.spawn,
    nproc: Annotated[int, typer.Option(min=1, help=NPROC_HELP)] = 1,
    suite: Annotated[
        str | None,
        typer.Option(
            help="a benchmark suite's reference settings before the key=value items: "
            "dmc_proprio, dmc_vision, dmc_proprio_cpu, atari100k (worldflux.training.suites)"
        ),
    ] = None,
) -> None:
    """Train a model online on an environment, or offline on data (dataset=<folder>), with
    evaluation and checkpoints."""
    from worldflux.training.run import build_trainer, default_run_dir
    from worldflux.training.run_config import parse_overrides
    from worldflux.training.suites import suite_overrides

    try:
        overrides = suite_overrides(suite, model, overrides or [])
        config = parse_overrides(model, env, overrides)
        out = run_dir or default_run_dir(config)
        if nproc > 1:
            env_args = [] if env is None else ["--env", env]
            relaunch(nproc, ["train", model, *env_args, "--run-dir", str(out),
                              "--collectors", str(collectors), "--start-method",
                              start_method.value, *(overrides or [])])  # fmt: skip

        def build(ctx: Any) -> Any:
            return build_trainer(
                config, out, collectors=collectors, distributed=ctx,
                start_method=start_method.value,
            )  # fmt: skip

        run_trainer(build, str(config.trainer.get("device", "cpu")))
    except WorldFluxError as err:
        _fail(err)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="a run directory with run.json and checkpoints")],
    steps: Annotated[int | None, typer.Option(help="new total env steps (extend a run)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads for this session")] = None,
    collectors: Annotated[
        int | None,
        typer.Option(min=1, help="collector processes (default: as the run was trained)"),
    ] = None,
    start_method: Annotated[
        StartMethod | None,
        typer.Option(help="how collector processes start (default: as the run was trained)"),
    ] = None,
    nproc: Annotated[int, typer.Option(min=1, help=NPROC_HELP)] = 1,
) -> None:
    """Continue a run from its latest checkpoint (exactly, for single-process runs).

    A run trained with ``--collectors N`` resumes with its N collectors (a new set of episodes);
    a data-parallel run resumes on any number of ranks (``--nproc``) that divides its batch.
    """
    from worldflux.training.run import finished_message, resume_trainer
    from worldflux.training.run_config import read_run_file

    changes: dict[str, Any] = {}
    if steps is not None:
        changes["steps"] = steps
    if threads is not None:
        changes["threads"] = threads
    options = {} if start_method is None else {"start_method": start_method.value}
    try:
        done = finished_message(run_dir, steps)
        if done:
            typer.echo(done)
            return
        if nproc > 1:
            extra = [f"--{k}={v}" for k, v in (("steps", steps), ("threads", threads),
                     ("collectors", collectors)) if v is not None]  # fmt: skip
            extra += [f"--start-method={v}" for v in options.values()]
            relaunch(nproc, ["resume", str(run_dir), *extra])

        def build(ctx: Any) -> Any:
            return resume_trainer(
                run_dir, collectors=collectors, distributed=ctx, collector_options=options,
                **changes,
            )  # fmt: skip

        device = str(read_run_file(run_dir).trainer.get("device", "cpu"))
        run_trainer(build, device, said="resumed at env step {trainer.step}")
    except WorldFluxError as err:
        _fail(err)


@app.command("eval")
def eval_(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="checkpoint dir (or run dir: latest), or pretrained:<name|dir|hub id> "
            "(worldflux pretrained lists the names)"
        ),
    ],
    episodes: Annotated[int, typer.Option(help="episodes to run")] = 10,
    seed: Annotated[
        int, typer.Option(min=0, help="seeds the evaluation envs and the agent's sampling")
    ] = 0,
    video: Annotated[Path | None, typer.Option(help="record episode 0 to .gif/.mp4")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads")] = 1,
) -> None:
    """Real environment returns of a checkpointed agent (no exploration; the same for a seed)."""
    from worldflux.agents.io import load_run_agent
    from worldflux.training.evaluate import evaluate
    from worldflux.training.run import env_factory

    _threads(threads)
    _seed_rngs(seed)
    documented = None
    try:
        if str(checkpoint).startswith("pretrained:"):
            from worldflux.cli_pretrained import for_eval

            agent, envs, documented = for_eval(str(checkpoint), video is not None)
        else:
            agent, spec = load_run_agent(checkpoint)
            envs = env_factory(spec, render=video is not None)
        result = evaluate(agent, envs, episodes, seed, video=video)
    except WorldFluxError as err:
        _fail(err)
    typer.echo(
        f"return {result['return_mean']:.2f} +- {result['return_std']:.2f} over "
        f"{episodes} episodes (mean length {result['length_mean']:.1f})"
    )
    typer.echo("returns: " + ", ".join(f"{r:.1f}" for r in result["returns"]))
    if documented is not None:
        typer.echo(
            f"documented: {documented.return_mean:.2f} +- {documented.return_std:.2f} over "
            f"{documented.episodes} episodes (seed {documented.seed})"
        )
    if video is not None:
        typer.echo(f"video: {video}")


@app.command()
def pretrained() -> None:
    """The agents shipped with worldflux: name, env and documented return."""
    from worldflux.cli_pretrained import print_table

    print_table()


@app.command()
def imagine(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint dir (or run dir: latest)")],
    out: Annotated[Path, typer.Option(help="output .gif or .mp4")] = Path("imagination.gif"),
    context: Annotated[int, typer.Option(help="real steps filtered before imagining")] = 5,
    length: Annotated[int, typer.Option(help="total steps shown (more than --context)")] = 50,
    seed: Annotated[int, typer.Option(min=0, help="seed of the episode")] = 0,
) -> None:
    """Video of real observations beside the model's open-loop predictions."""
    from worldflux.agents.io import load_run_agent
    from worldflux.training.evaluate import collect_sequence
    from worldflux.training.run import env_factory
    from worldflux.training.video import imagination_video

    _threads(1)
    _seed_rngs(seed)
    try:
        _check_imagine_steps(context, length)
        agent, spec = load_run_agent(checkpoint)
        env = env_factory(spec)(0)
        batch = collect_sequence(agent, env, seed, length)
        info = imagination_video(agent.model, batch, out, context=context)
    except WorldFluxError as err:
        _fail(err)
    err_txt = ", ".join(f"{e:.3f}" for e in info["open_loop_error"][:10])
    typer.echo(f"video: {info['path']} ({info['frames']} frames); open-loop error: {err_txt} ...")


@app.command()
def models() -> None:
    """Every preset with its parameter count (on a reference observation/action space)."""
    from rich.console import Console
    from rich.table import Table

    from worldflux.core.registry import default_names
    from worldflux.training.presets import preset_table

    defaults = set(default_names().values())
    table = Table(
        "model", "parameters", "counted for",
        caption="(default): what the bare family name builds, e.g. `train tdmpc2` = tdmpc2:5m",
    )  # fmt: skip
    for name, count, space in preset_table():
        label = f"{name} (default)" if name in defaults else name
        table.add_row(label, f"{count:,}" if count is not None else "-", space)
    Console().print(table)


@app.command()
def demo(
    run_dir: Annotated[Path | None, typer.Option(help="where to write")] = None,
    steps: Annotated[int, typer.Option(min=1, help="env steps")] = DEMO_STEPS,
) -> None:
    """A short visible run (TD-MPC2 on Pendulum, a few minutes on 2 cores), then a video."""
    from worldflux.training.evaluate import evaluate
    from worldflux.training.run import build_trainer, default_run_dir, env_factory
    from worldflux.training.run_config import parse_overrides

    _threads(1)
    settings = [s for s in DEMO_SETTINGS if not s.startswith("steps=")] + [f"steps={steps}"]
    typer.echo(f"worldflux demo: {DEMO_MODEL} on {DEMO_ENV}, {' '.join(settings)}")
    try:
        config = parse_overrides(DEMO_MODEL, DEMO_ENV, settings)
        with build_trainer(config, run_dir or default_run_dir(config)) as trainer:
            result = trainer.train()
        report(result, trainer)
        config.env["render_mode"] = "rgb_array"
        video = trainer.run_dir / "videos" / "eval.gif"
        ev = evaluate(trainer.agent, env_factory(config), 1, 0, video=video)
        typer.echo(
            f"video:       {video}  (one evaluation episode, return {ev['return_mean']:.1f})"
        )
        if "obs" in trainer.agent.model.heads:
            _imagination(trainer)
    except WorldFluxError as err:
        _fail(err)


def _imagination(trainer: Any) -> None:
    from worldflux.training.evaluate import collect_sequence
    from worldflux.training.video import imagination_video

    batch = collect_sequence(trainer.agent, trainer.eval_env_fn(0), 0, 60)
    path = trainer.run_dir / "videos" / "imagination.gif"
    imagination_video(trainer.agent.model, batch, path, context=5)
    typer.echo(f"imagination: {path}  (real vs open-loop predicted observations)")


def main() -> None:
    """Console entry point (``worldflux``)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Rendering rgb_array frames (videos) needs no display; keeps SDL from complaining headless.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    app(prog_name="worldflux")


if __name__ == "__main__":
    main()
