"""Stage 3's online reward from a preference-learned reward model (``reward_model=<run>/reward_model.pt``).

PEBBLE (Lee et al. 2021) fine-tunes online on the reward an ensemble learned from preferences, not on the env's;
so can stage 3: with ``reward_model`` set, every online step's reward is the ensemble mean of
:class:`robopretrain.reward_model.RewardEnsemble` on the step's stored observation and action, put through the same
affine map as the offline data's relabelled rewards::

    r_online(s, a) = (mean_e r_e(s, a_model) - offset) / scale

``offset`` and ``scale`` are what ``relabel.normalize`` recorded in the offline file
(:func:`robopretrain.reward_model.normalization_affine`; 0 and 1 when the offline file was not relabelled), and
``a_model`` is the agent's action re-expressed in the units the model was trained in
(:func:`robopretrain.envs.action_units.reexpress`). The algorithm's reward transform (``algo.reward_scale`` /
``reward_bias``) then applies as to any reward. Success, the evaluation and EPOpt's episode returns stay the env's.
The ensemble is not trained further online (PEBBLE's online preference queries are not implemented).

Checked when the run starts (``ValueError``, each naming the setting): the model's low-dim parts must be among the
agent's stored parts with the same sizes (a camera-only agent cannot feed a low-dim model), its task one-hot size the
agent's, its action size the agent's; an offline file relabelled by another ensemble (its recorded
``model_digest``), or relabelled with a normalisation whose constants were not recorded (a file written before they
were), is refused, since its rewards and the online ones would be two functions. Whether offline data with the env's
reward may enter the batches is :func:`robopretrain.build.refuse_learned_reward_online`'s decision.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopretrain.data.dataset import FILE_UNITS
from robopretrain.data.hdf5 import DatasetInfo
from robopretrain.data.keys import TASK_ID
from robopretrain.envs.action_units import ActionNormalization, describe, reexpress, same_units
from robopretrain.reward_model import RewardEnsemble, load_reward_model, model_digest

log = logging.getLogger(__name__)


@dataclass
class OnlineLearnedReward:
    """The learned reward of online steps: ``__call__(observations, actions) -> (T,) float32``."""

    model: RewardEnsemble
    path: Path
    offset: float = 0.0
    scale: float = 1.0
    agent_units: ActionNormalization | None = None  # the units of the actions it is given (the agent's)
    slot: int | None = None  # the task slot the model scores every step in (its data's only one; None: the step's)

    @torch.no_grad()
    def __call__(self, observations: Mapping[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
        """Rewards ``(T,)`` float32 of ``T`` steps: ``observations`` the agent's stored parts ``{key: (T, ...)}`` (the
        model reads its low-dim parts and the task id), ``actions`` ``(T, act_dim)`` in the agent's units."""
        spec = self.model.encoder.spec
        obs = {k: torch.as_tensor(np.asarray(observations[k]), dtype=torch.float32) for k in spec.low_dim_keys}
        if spec.num_tasks:
            ids = np.asarray(observations[TASK_ID]) if self.slot is None else \
                np.full(len(np.asarray(actions)), self.slot)
            obs[TASK_ID] = torch.as_tensor(ids, dtype=torch.int64)
        acts = np.asarray(actions, dtype=np.float32)
        units = self.model.action_units
        if units != FILE_UNITS:
            acts = reexpress(acts, self.agent_units, units, "the agent's actions", into="the reward model's",
                             quiet=True)  # every episode's: said once, when loaded
        r = self.model(obs, torch.from_numpy(acts)).mean(0).double().numpy()
        return ((r - self.offset) / self.scale).astype(np.float32)


def load_online_reward(path: str | os.PathLike, agent: Any, data: DatasetInfo | None = None,
                       setting: str = "reward_model", slot: int | None = None,
                       task: str | None = None, agent_units: Any = None) -> OnlineLearnedReward:
    """The reward model at ``path`` (a ``reward_model.pt``, or the run folder holding it) ready to reward
    ``agent``'s online steps, with the normalisation of the offline file ``data`` when it was relabelled by this
    model. ``agent_units``: the units of the agent's actions where it acts (default: its own,
    ``agent.action_normalization``; :func:`robopretrain.evaluation.acting_units`). ``slot``: the task slot the agent
    acts in (the target's, whose task is ``task``). Online and offline
    rewards stay one function: the online steps are scored in the slot the offline file's demos of ``task`` were
    relabelled in (the file's task id of ``task``, or its only one: a file without task ids is slot 0); without
    such a file, a model whose data were all in one other slot scores them in its own slot, and one that learnt
    several slots, not this one, is refused. Raises ``ValueError`` (naming ``setting``) when the file is missing or
    the model does not fit the agent or the data (module docstring)."""
    given = Path(str(path)).expanduser()
    file = given / "reward_model.pt" if given.is_dir() else given
    if not file.is_file():
        raise ValueError(f"{setting}={path}: no such file (give a reward_model.pt, or the run folder of python -m "
                         "robopretrain.reward_model that holds one)")
    try:
        model, spec = load_reward_model(file)
    except (OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{setting}={path}: not a reward model written by robopretrain.reward_model "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    stored = agent.stored_spec()
    have = dict(stored.low_dim)
    theirs = dict(spec.low_dim)
    missing = [k for k in spec.low_dim_keys if k not in have]
    if missing:
        raise ValueError(f"{setting}={path}: the model reads low-dim part(s) {missing}, which the agent does not "
                         f"observe (its low-dim parts: {sorted(have) or 'none'}); train the reward model on parts the "
                         "agent observes (its obs.low_dim)")
    sizes = [f"{k}: model {theirs[k]}, agent {have[k]}" for k in spec.low_dim_keys if theirs[k] != have[k]]
    if sizes:
        raise ValueError(f"{setting}={path}: observation part sizes differ ({'; '.join(sizes)})")
    if int(spec.num_tasks) != int(stored.num_tasks):
        raise ValueError(f"{setting}={path}: the model's task one-hot has {spec.num_tasks} slots, the agent's "
                         f"{stored.num_tasks}; train the reward model with the agent's obs.num_tasks")
    scored_in = None
    slots = getattr(model, "task_slots", None)
    relabelled = data.tasks if data is not None and data.learned_reward and spec.num_tasks else {}
    file_slot = relabelled[task] if task in relabelled else (
        next(iter(set(relabelled.values()))) if len(set(relabelled.values())) == 1 else None)
    if slot is not None and file_slot is not None:  # the slot its offline copy of the task was relabelled in
        scored_in = int(file_slot) if int(file_slot) != int(slot) else None
        if scored_in is not None:
            log.info("%s=%s: the offline file %s was relabelled in task slot %d, the agent acts in slot %d: the "
                     "online steps are scored in slot %d too", setting, path, data.path, scored_in, slot, scored_in)
    elif spec.num_tasks and slot is not None and slots and int(slot) not in slots:
        if len(slots) > 1:
            raise ValueError(f"{setting}={path}: the model learnt rewards in task slots {slots}, the agent acts in "
                             f"slot {slot} (the target's task_id), an input the model never saw; train it on data "
                             "of the target's task (its demos with that task id)")
        scored_in = slots[0]
        log.info("%s=%s learnt its rewards in task slot %d (its data's), the agent acts in slot %d: the online steps "
                 "are scored in slot %d, as the offline data it relabelled were", setting, path, scored_in, slot,
                 scored_in)
    if model.act_dim != int(agent.act_dim):
        raise ValueError(f"{setting}={path}: the model scores {model.act_dim}-dim actions, the agent acts in "
                         f"{agent.act_dim}")
    agent_units = agent.action_normalization if agent_units is None else agent_units
    if model.action_units == FILE_UNITS:
        log.warning("%s=%s records no action units (written by an older version): the agent's actions are scored as "
                    "they are, in the agent's units (%s)", setting, path, describe(agent_units))
    elif not same_units(model.action_units, agent_units):
        log.info("%s=%s scores actions in its own units (%s): the agent's (%s) are re-expressed in them at every "
                 "step", setting, path, describe(model.action_units), describe(agent_units))
    offset, scale = 0.0, 1.0
    record = data.learned_reward if data is not None else None
    if record is not None:
        digest = record.get("model_digest")
        if digest is not None and digest != model_digest(model):
            source = f", relabelling {record['source']}" if record.get("source") else ""
            raise ValueError(f"{setting}={path} is not the model that relabelled the offline data {data.path} (its "
                             f"rewards come from another ensemble{source}); give that run's reward_model.pt, or "
                             "offline data relabelled by this one")
        if digest is None:
            log.warning("%s: its learned rewards record no model digest (written by an older version): cannot check "
                        "that %s=%s wrote them", data.path, setting, path)
        normalize = str(record.get("normalize") or "none")
        if "offset" in record and "scale" in record:
            offset, scale = float(record["offset"]), float(record["scale"])
        elif normalize != "none":
            raise ValueError(f"{data.path}: its learned rewards were normalised (relabel.normalize={normalize}) with "
                             "constants it does not record (written by an older version), so online steps cannot be "
                             "put in the same units: relabel the file again (python -m robopretrain.reward_model)")
        if not scale > 0:
            raise ValueError(f"{data.path}: its learned-reward record has scale={scale}; expected a positive number")
    return OnlineLearnedReward(model=model, path=file, offset=offset, scale=scale,
                               agent_units=agent_units, slot=scored_in)


__all__ = ["OnlineLearnedReward", "load_online_reward"]
