"""The CLI's pretrained agents: ``worldflux pretrained``, ``worldflux eval pretrained:<name>``."""

from __future__ import annotations

import dataclasses
from typing import Any

from worldflux.agents.pretrained import available, env_fn, load_pretrained, read_card


def for_eval(ref: str, render: bool) -> tuple[Any, Any, Any]:
    """A pretrained agent, its env factory (``render_mode="rgb_array"`` with `render`) and its
    documented `EvalRecord` (None when its card has none)."""
    agent = load_pretrained(ref)
    card = agent.card
    if render:
        card = dataclasses.replace(card, env_kwargs={**card.env_kwargs, "render_mode": "rgb_array"})
    return agent, env_fn(card), card.evaluation


def print_table() -> None:
    """Print the shipped agents: name, env, documented return."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE, caption="worldflux eval pretrained:<name> --episodes 10")
    table.add_column("name", no_wrap=True)
    table.add_column("env", no_wrap=True)
    table.add_column("return", justify="right")  # documented, over `episodes`
    table.add_column("episodes", justify="right")
    for name in available():
        card = read_card(name)
        ev = card.evaluation
        told = ("-", "-") if ev is None else (f"{ev.return_mean:.2f}", str(ev.episodes))
        table.add_row(name, card.env_id or "-", *told)
    console = Console()
    wide = console.options.update_width(1000)
    need = console.measure(table, options=wide).maximum  # narrow terminals wrap, names stay whole
    (console if need <= console.width else Console(width=need)).print(table)
