"""The agent contract the `Trainer` drives, and the guarded optimizer step every agent uses.

An agent owns a world model, whatever else it learns (actor, critic, ...), and its optimizers.

- ``act(obs, state, explore, is_first) -> (action, new_state)``: ``obs`` is a batch in the
  env's form: a Tensor ``(N, *shape)``, or a dict of them for a Dict space (see
  `worldflux.core.spec`), ``state`` the agent's acting memory (None at the start),
  ``is_first`` (N,) bool marks envs whose episode just began. ``action`` is float ``(N, A)`` in the
  model's format: one-hot for discrete spaces, [-1, 1] for continuous ones.
- ``update(batch) -> metrics``: one update on a replayed `Batch`, the family's only update path
  (the agent owns the optimisers; the model holds the losses). Every optimizer step goes through
  `guarded_step`, which decides on the device: a non-finite loss or gradient makes the step
  change nothing and the update reports ``nonfinite`` = 1.0 (a 0-d tensor on the device, so an
  update never waits for the device). A skipped world-model step masks the rest of the update
  too (its later steps get the flag as ``enabled``; EMA targets move `only_if` it is set), and
  running statistics that a skipped step's loss had already updated are put back
  (`copy_buffers` / `restore_buffers`).
- ``state_dict()`` / ``load_state_dict()``: every module and optimizer, for checkpoints.
- ``predict(obs, state) -> (action, state)``: `act` for raw env observations and actions (see
  `worldflux.agents.predict`); ``save(dir)`` / `worldflux.load_agent(dir)` (`worldflux.agents.io`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from worldflux.core.batch import Batch
from worldflux.core.model import Metrics, WorldModel
from worldflux.core.spec import Obs
from worldflux.core.state import State
from worldflux.distributed.gradsync import sync_gradients


def guarded_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    max_grad_norm: float | None,
    backward: bool = True,
    enabled: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Backward + clip + step, with no effect when the loss or the gradient norm is NaN/Inf.

    Returns (ok, grad_norm): ``ok`` a 0-d bool tensor, False when the step was skipped,
    ``grad_norm`` a detached 0-d tensor; both on the parameters' device and decided there, so a
    step reads nothing back to the host. The optimizer always steps, masked by ``ok``
    (`masked_step`): a skipped step leaves parameters and optimizer state (moments, step
    counts) bit-identical. The gradients stay in ``.grad`` (non-finite after a skipped step;
    clearing them only then would take a host read); the next backward starts from none.
    `enabled` (0-d bool) skips the step when False as well (the flag of an earlier step of the
    same update). Under data-parallel training the gradients are averaged over ranks right after
    backward (`worldflux.distributed.gradsync`), so every rank clips, checks and steps on the
    same values. ``backward=False``: the caller has already put the gradients of `loss` in (one
    backward for two losses of one compiled function, which is one autograd node: see
    `worldflux.agents.dreamer.actor_critic_step`).
    """
    params = [p for p in params if p.requires_grad]  # frozen ones (an EMA target) get none
    finite = torch.isfinite(loss.detach())
    if backward:
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)  # a NaN/Inf loss leaves non-finite gradients: masked below
    # data-parallel: rank-mean gradients (non-finite on every rank when any rank's loss was)
    sync_gradients(params, poisoned=~finite)
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros_like(finite), loss.new_tensor(float("nan")).detach()
    if max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))  # type: ignore[union-attr]
    ok = finite & torch.isfinite(norm)
    if enabled is not None:
        ok = ok & enabled
    masked_step(optimizer, ok)
    return ok, norm.detach()


def masked_step(optimizer: torch.optim.Optimizer, ok: Tensor) -> None:
    """``optimizer.step()`` that changes nothing where the 0-d bool `ok` is False, without a
    host read: fused torch optimizers and `LaProp` skip on the device through ``found_inf``
    (the flag torch's AMP grad scaler hands them); any other optimizer steps, then gets its
    parameters and tensor state back with `torch.where`. A state entry created by the skipped
    step is reset to zeros (Adam's fresh state). Two cases read `ok` on the host: a state tensor
    on another device (the CPU step count of torch's per-tensor Adam on CUDA: the agents use
    fused Adam there) and a Python-number state entry."""
    if getattr(optimizer, "_step_supports_amp_scaling", False) or getattr(
        optimizer, "found_inf_aware", False
    ):
        optimizer.found_inf = (~ok).float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
        return
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    before = [dict(optimizer.state.get(p, {})) for p in params]
    saved = [(p.detach().clone(), {k: v.clone() for k, v in s.items() if torch.is_tensor(v)})
             for p, s in zip(params, before, strict=True)]  # fmt: skip
    optimizer.step()
    host_ok: bool | None = None
    with torch.no_grad():
        for p, old, (p_saved, t_saved) in zip(params, before, saved, strict=True):
            p.copy_(torch.where(ok, p, p_saved))
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if torch.is_tensor(v):
                    prev = t_saved.get(k, torch.zeros_like(v))
                    v.copy_(torch.where(ok.to(v.device), v, prev))
                elif (k in old and v != old[k]) or (k not in old and v is not None):
                    host_ok = bool(ok) if host_ok is None else host_ok
                    state[k] = v if host_ok else old.get(k, 0)


def copy_buffers(module: nn.Module) -> list[Tensor]:
    """Copies of `module`'s buffers (running statistics such as a return or Q scale), taken
    before a loss that updates them; `restore_buffers` puts them back when its step is skipped."""
    return [b.detach().clone() for b in module.buffers()]


@torch.no_grad()
def restore_buffers(module: nn.Module, copies: list[Tensor], ok: Tensor) -> None:
    """Inverse of `copy_buffers` where the 0-d bool `ok` is False: `module`'s buffers get the
    copied values back, in place (a `torch.where`, no host read); where True they keep theirs."""
    for b, saved in zip(module.buffers(), copies, strict=True):
        b.copy_(torch.where(ok, b, saved))


@contextmanager
def only_if(ok: Tensor | None, tensors: Iterable[Tensor]) -> Iterator[None]:
    """The in-place changes the block makes to `tensors` (an EMA target's weights) stand only
    where the 0-d bool `ok` is True (always when it is None); otherwise they get their values
    from before back."""
    if ok is None:
        yield
        return
    tensors = list(tensors)
    saved = [t.detach().clone() for t in tensors]
    yield
    with torch.no_grad():
        for t, old in zip(tensors, saved, strict=True):
            t.copy_(torch.where(ok, t, old))


def _first_problem(err: Exception) -> str:
    """The first line of torch's load_state_dict report that names a problem (it lists every
    missing key, hundreds of lines), shortened."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [repr(err)]
    text = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
    return text if len(text) <= 160 else text[:157] + "..."


class Agent(ABC):
    """Base class of agents (see the module docstring for the contract)."""

    model: WorldModel
    batch_size: int  # sequences per replayed batch
    seq_len: int  # steps per replayed sequence
    default_train_ratio: float  # replayed steps per env step the reference uses
    within_episode: bool = False  # replay windows must lie inside one episode (TD-MPC2)
    # What `make_agent` records, so that `save` can rebuild the agent without its env:
    options: dict[str, Any] | None = None  # the agent class's keyword options
    native_action_space: Any = None  # the env's own action space `predict` answers in
    card: Any = None  # a pretrained agent's `AgentCard` (set by `load_pretrained`)

    @property
    def replayed_per_update(self) -> int:
        """Env steps one update replays: batch_size * seq_len (the train-ratio unit)."""
        return self.batch_size * self.seq_len

    @abstractmethod
    def act(
        self,
        obs: Obs,
        state: State | None = None,
        *,
        explore: bool,
        is_first: Tensor | None = None,
    ) -> tuple[Tensor, State | None]:
        """Actions (N, A) for a batch of observations, and the new acting state. Acting never
        records an autograd graph: the action and the State tensors do not require grad."""

    @abstractmethod
    def update(self, batch: Batch) -> Metrics:
        """One update on `batch`; returns detached scalar metrics (``nonfinite`` counts skips)."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The trained modules by name (their weights go to safetensors)."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers by name."""

    def check_envs(self, envs: Sequence[Any]) -> None:
        """Raise a `ConfigError` when this agent cannot act in `envs` (e.g. a goal-conditioned
        agent in envs that have no goal). Called before training or evaluating starts, so a
        bad combination fails up front. Default: every env will do."""
        del envs

    def on_episode_start(self, env_ids: Sequence[int], envs: Sequence[Any]) -> None:
        """Called before `act` when episodes began in rows `env_ids` of `envs` (the env copies
        whose observations `act` receives, row i from ``envs[i]``): all rows at the start,
        after a resume and after the agent acted in other envs (an evaluation). Default:
        nothing; a goal-conditioned agent reads the new goals here."""
        del env_ids, envs

    def extra_state(self) -> dict[str, Any]:
        """Anything else to checkpoint (counters, normalisers); JSON scalars or tensors."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of `extra_state`."""
        del state

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": type(self.model).__name__,  # lets a load name both models on a mismatch
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`; a state of another model family or size is a one-line
        `CheckpointError` (not torch's list of every missing key)."""
        # training imports agents: a module-level import of training.checkpoint would be a cycle
        from worldflux.training.checkpoint import CheckpointError

        mine, saved = type(self.model).__name__, state.get("model")
        if saved is not None and saved != mine:
            raise CheckpointError(
                f"checkpoint: holds a {saved} agent, but this run builds a {mine} agent; "
                "was the checkpoint copied from another run?"
            )
        try:
            for k, m in self.modules().items():
                m.load_state_dict(state["modules"][k])
            for k, o in self.optimizers().items():
                o.load_state_dict(state["optimizers"][k])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint: its weights do not fit this {mine} agent ({_first_problem(err)}); "
                "was it saved with another model preset or config?"
            ) from err
        self.load_extra_state(state.get("extra", {}))

    def train(self, mode: bool = True) -> None:
        for m in self.modules().values():
            m.train(mode)

    def predict(
        self,
        obs: Any,
        state: State | None = None,
        deterministic: bool = True,
        *,
        episode_start: Any = None,
    ) -> tuple[Any, State | None]:
        """One action for a raw env observation: ``action, state = agent.predict(obs, state)``.

        `obs` is what the env returns (numpy or torch; a dict for Dict spaces), unbatched or
        with a leading batch dim. The action is what the env's ``step`` accepts: a Box action
        rescaled to the env's bounds (`native_action_space`; model format [-1, 1] when unknown),
        an int for Discrete spaces (an array of them when batched). `state` is the acting
        memory: None at an episode's start, then what the previous call returned.
        `episode_start` (a bool, or one per row) restarts rows whose episode just began.
        `deterministic` acts without exploration (MPPI/CEM planning still samples from torch's
        RNG: seed it for repeatable actions). Runs in eval mode; see `worldflux.agents.predict`.
        """
        from worldflux.agents.predict import predict

        return predict(self, obs, state, deterministic, episode_start)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the agent (weights, optimizers, config, specs) into the directory `path`, so
        that `worldflux.load_agent(path)` rebuilds it without its env. -> the directory."""
        from worldflux.agents.io import save_agent

        return save_agent(self, path)

    def save_pretrained(self, path: str | os.PathLike[str], card: Any) -> Path:
        """Write the agent in the Hugging Face Hub layout (config.json, model.safetensors,
        README.md) with `card` (an `AgentCard`: env, training, measured return), so that
        `worldflux.load_pretrained(path)` rebuilds it. -> the directory."""
        from worldflux.agents.pretrained import save_pretrained

        return save_pretrained(self, path, card)
