"""Off-dynamics reward correction (DARC: Eysenbach et al. 2021, "Off-Dynamics Reinforcement Learning: Training for
Transfer with Domain Classifiers", eq. 5 and Algorithm 1).

Two classifiers tell source transitions (label 0: the sim the agent trains in) from target transitions (label 1:
the gap's target dynamics, a small fixed set): ``q(target | s, a)`` and ``q(target | s, a, s')``. With Bayes' rule
their log-odds give the log ratio of the dynamics,

    delta_r(s, a, s') = log q(tgt|s,a,s') - log q(src|s,a,s') - log q(tgt|s,a) + log q(src|s,a)
                      = log p_target(s'|s,a) - log p_source(s'|s,a)                      (DARC eq. 5)

which is added to the source reward, so the agent is paid less for transitions only the source allows.

Agreement with the authors' code (google-research/google-research ``darc/``, read for this module):
``classifiers.py`` builds ``sa_logits = MLP_sa(s, a)`` (one hidden layer of 32 ReLU units, 2 logits) and
``sas_logits = sa_logits + MLP_sas(s, a, s')`` (the (s, a, s') classifier as a residual on the (s, a) one), with
Gaussian input noise (std ``input_noise = 1.0``) only while training; ``darc_agent.py`` trains both with the sum
of their cross-entropies on equal numbers of source (label 0) and target (label 1) rows each agent step, and in
``critic_loss`` adds ``delta_r_scale * delta_r`` with ``delta_r = log sas[1] - log sas[0] - log sa[1] + log sa[0]``
of the noise-free softmax probabilities, zero before ``delta_r_warmup`` steps. :func:`delta_reward` is that
expression (on log-softmax of the logits, the same numbers without the log of a rounded probability), with
``log q(tgt|.)`` = index 1 and ``log q(src|.)`` = index 0: identical to eq. 5 and to the brief's order of terms.
:class:`DarcClassifier` has the authors' structure and defaults; :class:`RewardCorrection` trains it each update
and corrects the rewards of the sampled batch before the critic sees them. One deliberate difference: the rewards
here are the algorithm's scaled ones (``scale * r + bias``), so the correction enters as ``scale * delta_r`` (the
authors' reward scale multiplies the corrected reward the same way). Cal-QL's Monte-Carlo returns ``mc_returns`` are
not corrected (they are computed when episodes are stored, before any classifier exists).

Inputs: the agent's low-dim observation parts (``obs.low_dim``; a camera-only agent is refused), normalised with the
agent's own statistics (the critic encoder's ``mean`` / ``std``), and the action. An agent without statistics
(``obs.normalize=false``: mean 0, std 1) gets those of the data the classifiers compare: the target transitions'
``s`` and ``s'`` rows pooled with the first source batch's (``std + 1e-3``, the agent's own rule,
:data:`~robopretrain.nets.obs_encoder.STD_EPS`), so that ``input_noise`` is about one standard deviation of the data
per dimension, as far as the first batch shows the data (half of it offline data at the default
``online.offline_ratio=0.5``; at ``offline_ratio=0`` the first online episodes' alone: a goal those few episodes hold
fixed gets a spread too small for the goals that come later); they are kept in the run's checkpoints (a run
checkpointed before, whose classifiers read raw inputs, resumes reading them raw). The target's alone made a
dimension constant there (a goal fixed in the target's few episodes) scale the source's rows by 1000: DARC charged
hundreds per step between identical dynamics. Here this differs from the authors' code, which adds the noise to raw
states: on data in metres (a few centimetres of spread) a noise of 1.0 in raw units hid every gap from the
classifiers (0.51 accuracy, no correction), without a word.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from robopretrain.data.keys import ACTIONS, NEXT_OBS, OBS, REWARDS
from robopretrain.nets.obs_encoder import STD_EPS

log = logging.getLogger(__name__)

@dataclass
class DARCSettings:
    """``transfer.darc`` of ``configs/finetune.yaml`` (defaults: the authors' ``classifiers.py``, ``darc_agent.py``)."""

    enabled: bool = False
    hidden: int = 32  # hidden units of each classifier (one ReLU layer)
    lr: float = 3e-4  # the classifiers' Adam learning rate
    input_noise: float = 1.0  # std of the Gaussian noise on the classifiers' (normalised) inputs while training
    scale: float = 1.0  # delta_r_scale: weight of the correction
    warmup_updates: int = 0  # delta_r_warmup: updates before the correction is applied (classifiers train from 0)

    def __post_init__(self) -> None:
        if isinstance(self.hidden, (list, tuple)) or not str(self.hidden).lstrip("-").isdigit():
            raise ValueError(f"finetune config: transfer.darc.hidden={self.hidden!r}; expected one integer >= 1, the "
                             "hidden units of each classifier's single layer (not a list, unlike transfer.dann.hidden)")
        if not np.isfinite(float(self.scale)) or float(self.scale) < 0:
            raise ValueError(f"finetune config: transfer.darc.scale={self.scale!r}; expected a finite number >= 0 (a "
                             "negative scale rewards the transitions only the source dynamics allow)")
        if (int(self.hidden) < 1 or not float(self.lr) > 0 or float(self.input_noise) < 0
                or int(self.warmup_updates) < 0):
            raise ValueError(f"finetune config: transfer.darc={self}; expected hidden >= 1, lr > 0, input_noise >= 0, "
                             "warmup_updates >= 0")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> DARCSettings:
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown transfer.darc key(s) {unknown}; valid keys: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


def delta_reward(sa_logits: torch.Tensor, sas_logits: torch.Tensor) -> torch.Tensor:
    """DARC's ``delta_r`` ``(B,)`` from the two classifiers' logits ``(B, 2)`` (index 0 source, 1 target).

    ``log q(tgt|s,a,s') - log q(src|s,a,s') - log q(tgt|s,a) + log q(src|s,a)`` (Eysenbach et al. 2021, eq. 5;
    the authors' ``darc_agent.critic_loss``). Raises ``ValueError`` unless both are ``(B, 2)``.
    """
    if sa_logits.shape != sas_logits.shape or sa_logits.ndim != 2 or sa_logits.shape[1] != 2:
        raise ValueError(f"delta_reward: expected two (B, 2) logit tensors, got {tuple(sa_logits.shape)} and "
                         f"{tuple(sas_logits.shape)}")
    sas, sa = torch.log_softmax(sas_logits, dim=1), torch.log_softmax(sa_logits, dim=1)
    return sas[:, 1] - sas[:, 0] - sa[:, 1] + sa[:, 0]


class DarcClassifier(nn.Module):
    """``(s, a, s') -> (sa_logits, sas_logits)``, each ``(B, 2)``: the authors' two-headed classifier."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.sa = nn.Sequential(nn.Linear(self.obs_dim + self.act_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.residual = nn.Sequential(nn.Linear(2 * self.obs_dim + self.act_dim, hidden), nn.ReLU(),
                                      nn.Linear(hidden, 2))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor, noise: float = 0.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        sas = torch.cat([obs, actions, next_obs], dim=-1)
        sa = sas[:, : self.obs_dim + self.act_dim]
        if noise > 0:  # independent noise for the two inputs, as the authors' two GaussianNoise layers
            sas = sas + noise * torch.randn(sas.shape, generator=generator).to(sas)
            sa = sa + noise * torch.randn(sa.shape, generator=generator).to(sa)
        sa_logits = self.sa(sa)
        return sa_logits, sa_logits + self.residual(sas)


def classifier_loss(sa_logits: torch.Tensor, sas_logits: torch.Tensor, labels: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of the two mean cross-entropies (labels ``(B,)`` int64, 1 = target) and both accuracies."""
    ce = nn.functional.cross_entropy
    loss_sa, loss_sas = ce(sa_logits, labels), ce(sas_logits, labels)
    with torch.no_grad():
        metrics = {"darc/sa_accuracy": (sa_logits.argmax(1) == labels).float().mean(),
                   "darc/sas_accuracy": (sas_logits.argmax(1) == labels).float().mean(),
                   "darc/sa_loss": loss_sa.detach(), "darc/sas_loss": loss_sas.detach()}
    return loss_sa + loss_sas, metrics


class RewardCorrection:
    """Trains the DARC classifiers on sampled source batches against the fixed target transitions, and adds
    ``reward_scale * scale * delta_r`` to the sampled batches' rewards (after ``warmup_updates`` updates).

    ``target``: the target transitions as a batch (``observations`` / ``next_observations`` dicts of arrays with
    the agent's low-dim parts, ``actions``), at least one row. ``reward_scale``: the algorithm's reward scale.
    """

    def __init__(self, agent: Any, target: Mapping[str, Any], settings: DARCSettings, *, reward_scale: float,
                 seed: int) -> None:
        self.keys = list(agent.spec.low_dim_keys)
        if not self.keys:
            raise ValueError("transfer.darc needs low-dim observation parts (obs.low_dim) for its classifiers; this "
                             "agent has cameras only")
        self.settings, self.reward_scale, self.device = settings, float(reward_scale), agent.device
        enc = agent.critic_encoder
        self.mean, self.std = enc.mean.detach().clone(), enc.std.detach().clone()
        self.target = target
        self.own_stats = bool((self.mean == 0).all() and (self.std == 1).all())
        self.stats_pending = self.own_stats  # an agent without statistics: set at the first batch (_pool_stats)
        if self.own_stats:
            log.info("transfer.darc: the agent does not normalise its observations (obs.normalize=false); the "
                     "classifiers normalise theirs with the statistics of the target transitions and the first source "
                     "batch, so input_noise=%g is in standard deviations of the data", float(settings.input_noise))
        self._normalise_target()
        self.target_actions = torch.as_tensor(np.asarray(target[ACTIONS]), dtype=torch.float32, device=self.device)
        if len(self.target_actions) < 1:
            raise ValueError("transfer.darc: no target transitions (gap.target_transitions must be >= 1)")
        with torch.random.fork_rng(devices=[]):  # its own initialisation: the agent's random draws stay as they were
            torch.manual_seed(int(seed))
            self.classifier = DarcClassifier(self.target_obs.shape[1], agent.act_dim, settings.hidden).to(self.device)
        self.optimizer = torch.optim.Adam(self.classifier.parameters(), lr=float(settings.lr))
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.updates = 0

    def _normalise_target(self) -> None:
        """The target transitions' states under the classifiers' statistics (again when a resume restores others)."""
        self.target_obs = self.states(self.target[OBS])
        self.target_next = self.states(self.target[NEXT_OBS])

    def states(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """The normalised low-dim state ``(B, D)`` of an observation dict."""
        return (self._raw(obs) - self.mean) / self.std

    def _raw(self, obs: Mapping[str, Any]) -> torch.Tensor:
        return torch.cat([torch.as_tensor(np.asarray(obs[k]) if not torch.is_tensor(obs[k]) else obs[k],
                                          dtype=torch.float32).to(self.device) for k in self.keys], dim=-1)

    def _pool_stats(self, batch: Mapping[str, Any]) -> None:
        """An agent without statistics: the classifiers' input statistics from the target transitions' ``s`` and
        ``s'`` rows and the first source ``batch``'s, together."""
        raw = torch.cat([self._raw(self.target[OBS]), self._raw(self.target[NEXT_OBS]), self._raw(batch[OBS]),
                         self._raw(batch[NEXT_OBS])])
        self.mean, self.std = raw.mean(0), raw.std(0, correction=0) + STD_EPS
        self.stats_pending = False
        self._normalise_target()

    def __call__(self, batch: Mapping[str, Any], with_metrics: bool = False) -> tuple[dict[str, Any], dict[str, float]]:
        """One classifier step on ``batch`` (source) against as many target rows, then ``batch`` with corrected
        rewards; returns ``(batch, metrics)``."""
        if self.stats_pending:
            self._pool_stats(batch)
        s, a, s2 = self.states(batch[OBS]), batch[ACTIONS].to(self.device, torch.float32), self.states(batch[NEXT_OBS])
        n = len(s)
        rows = torch.randint(0, len(self.target_actions), (n,), generator=self.generator)
        obs = torch.cat([s, self.target_obs[rows]])
        acts = torch.cat([a, self.target_actions[rows]])
        nxt = torch.cat([s2, self.target_next[rows]])
        labels = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)]).to(self.device)
        sa_logits, sas_logits = self.classifier(obs, acts, nxt, float(self.settings.input_noise), self.generator)
        loss, metrics = classifier_loss(sa_logits, sas_logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        with torch.no_grad():
            dr = delta_reward(*self.classifier(s, a, s2))
        on = self.updates > int(self.settings.warmup_updates)
        out = dict(batch)
        if on:
            out[REWARDS] = batch[REWARDS] + (self.reward_scale * float(self.settings.scale) * dr).to(batch[REWARDS])
        if not with_metrics:
            return out, {}
        change = self.reward_scale * float(self.settings.scale) * dr.mean() if on else torch.zeros(())
        metrics.update({"darc/delta_r_mean": dr.mean(), "darc/delta_r_std": dr.std(correction=0),
                        "darc/reward_change_mean": change, "darc/applied": float(on)})
        return out, {k: float(v) for k, v in metrics.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "updates": self.updates,
                "mean": self.mean.cpu(), "std": self.std.cpu(), "stats_pending": self.stats_pending}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint's classifiers with the input statistics they were trained on: a checkpoint written
        before they were kept had the agent's own (mean 0, std 1 for an agent without statistics: raw inputs)."""
        mean, std = state.get("mean"), state.get("std")
        if mean is None and not self.own_stats:  # the agent's own statistics, as then
            mean, std = self.mean, self.std
        elif mean is None:
            mean, std = torch.zeros_like(self.mean), torch.ones_like(self.std)
            log.warning("transfer.darc: resuming a checkpoint written before the classifiers' input statistics "
                        "were kept: they go on reading raw inputs, as they were trained (input_noise=%g in the "
                        "data's own units)", float(self.settings.input_noise))
        self.mean, self.std = mean.to(self.device), std.to(self.device)
        self.stats_pending = bool(state.get("stats_pending", False))  # (a checkpoint before the first batch)
        self._normalise_target()
        self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.updates = int(state["updates"])


__all__ = ["DARCSettings", "DarcClassifier", "RewardCorrection", "classifier_loss", "delta_reward"]
