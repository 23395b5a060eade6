"""Decision Transformer (Chen et al. 2021): a return-conditioned causal transformer over (R, s, a) tokens.

Model (defaults: REFERENCE.md and CORL ``dt.py``: context K=20, embedding 128, 3 layers, 1 head, dropout 0.1,
AdamW lr 1e-4, weight decay 1e-4, linear warm-up over 10k updates, gradient-norm clip 0.25)::

    e_t = timestep_emb(t)                                   t: step index inside the episode, clamped to max_ep_len - 1
    tokens = (R_0 + e_0, s_0 + e_0, a_0 + e_0, R_1 + e_1, ...)      R, s, a: linear(return-to-go), linear(features),
                                                                    linear(action)
    h = out_norm(blocks(dropout(emb_norm(tokens))))                 pre-LN GPT blocks with a causal mask
    a_hat_t = max_action * tanh(linear(h[s_t]))                     the action is predicted from the s_t token
    loss = sum_t,j mask_t (a_hat_tj - a_tj)^2 / (act_dim * sum_t mask_t)         (MSE over the real tokens)

``R_t`` is the undiscounted return-to-go ``sum_{t' >= t} r_t'`` of the training rewards (``reward_scale`` x the
data's reward; :mod:`robopretrain.data.sequences`). At evaluation the first token is ``target_return *
reward_scale`` and after each step the env's reward (times ``reward_scale``) is subtracted (CORL's ``eval_rollout``).

Attention mask: token i attends to token j iff ``j <= i`` and j is a real (not padded) token, or ``j == i``; padding
is at the start of a window (a window that begins before its episode does), as at evaluation when fewer than K steps
have been taken. Letting a padded token attend to itself keeps its output finite (a row of only masked keys would
give NaN, which a later ``0 * NaN`` would spread); real tokens never see padded ones, and padded outputs are not in
the loss.

Differences from CORL's ``dt.py`` (on purpose): padding at the start instead of the end (the form acting uses); the
MSE averages over the real tokens (the original DT code's masked mean) where CORL divides by all B*K tokens (the
two are equal on a batch without padding); timesteps are clamped instead of indexing past the embedding table.

Checked against CORL's ``DecisionTransformer`` (``algorithms/offline/dt.py`` of tinkoff-ai/CORL at 6afec904) with the
same weights (CORL's state dict loaded into ours, names mapped ``attention. -> attn.``, ``action_head.0 ->
action_head``; every weight drawn from N(0, 0.3)) and the same batch (B=4, K=5, 11-D states, 3-D actions, embedding
32, 2 layers, 2 heads, dropout off), float64, a throwaway script: without padding, max abs difference of the
predicted actions 0, of the loss 1.1e-16 and of the 37 parameter gradients 1.7e-18; with padding (CORL's windows
padded at the end, ours the same real steps padded at the start), the actions on real steps differ by 2.2e-16 and
CORL's loss x (B*K / real steps) equals ours to 1.7e-16.

Stateful acting (a policy with a history): :meth:`DecisionTransformer.reset_episode` starts an episode (the target
return), :meth:`~DecisionTransformer.act` appends the observation's features and returns ``a_hat`` for the last
state token of the last K steps (the history keeps that predicted action, not what the env may have clipped it to,
as CORL's ``eval_rollout`` does), :meth:`~DecisionTransformer.observe_reward` decrements the return-to-go.
:func:`robopretrain.evaluation.run_episodes` calls these hooks when an agent has them; a loop of one's own must call
``reset_episode()`` at each episode's start (an episode that runs past twice the longest training episode, which a
forgotten reset makes, is warned about once; not when the toolkit's own loops reset, ``managed=True``: there a long
episode is the env's).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from robopretrain.algos.base import metrics_to_floats
from robopretrain.data.sequences import MASK, RETURNS_TO_GO, TIMESTEPS

log = logging.getLogger(__name__)


@dataclass
class DTConfig:
    context_len: int = 20  # K steps (3K tokens)
    embed_dim: int = 128
    num_layers: int = 3
    num_heads: int = 1
    attention_dropout: float = 0.1
    residual_dropout: float = 0.1
    embedding_dropout: float = 0.1
    max_ep_len: int = 1000  # timestep embeddings; later steps use the last one
    max_action: float = 1.0
    lr: float = 1.0e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1.0e-4
    warmup_steps: int = 10000
    clip_grad: float = 0.25  # gradient-norm clip; 0: none
    batch_size: int = 64  # sequences per batch
    reward_scale: float = 1.0  # training and evaluation rewards are multiplied by it
    target_return: float = 1.0  # evaluation: the return asked for, in the env's reward units (sparse success: 1)


def dt_action_loss(pred: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE ``sum mask * (pred - a)^2 / (A * sum mask)``; ``pred``, ``actions`` ``(B, K, A)``, ``mask``
    ``(B, K)`` in {0, 1}. Raises ``ValueError`` when the mask has no real step."""
    if float(mask.sum()) <= 0:
        raise ValueError("dt_action_loss: the mask marks no real step")
    err = (pred - actions).pow(2).mean(-1)
    return (err * mask).sum() / mask.sum()


def dt_attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, L, L)``, True where query i may attend key j: ``j <= i`` and (key j valid or ``j == i``).

    ``valid``: boolean ``(B, L)`` per token."""
    L = valid.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(L, dtype=torch.bool, device=valid.device)
    return causal & (valid[:, None, :] | eye)


class _Block(nn.Module):
    """Pre-LayerNorm GPT block: ``x + drop(attn(ln1 x))``, then ``x + drop(mlp(ln2 x))`` (MLP 4x, GELU)."""

    def __init__(self, dim: int, heads: int, attn_drop: float, resid_drop: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=attn_drop, batch_first=True)
        self.drop = nn.Dropout(resid_drop)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(resid_drop))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        blocked = (~allowed).repeat_interleave(self.heads, dim=0)  # (B * heads, L, L), True = may not attend
        out = self.attn(h, h, h, attn_mask=blocked, need_weights=False)[0]
        x = x + self.drop(out)
        return x + self.mlp(self.norm2(x))


class DTNetwork(nn.Module):
    """The transformer: ``forward(states (B,K,D), actions (B,K,A), rtg (B,K), timesteps (B,K), mask (B,K))`` ->
    predicted actions ``(B, K, A)`` (see the module docstring)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: DTConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.cfg = cfg
        self.timestep_emb = nn.Embedding(cfg.max_ep_len, d)
        self.state_emb = nn.Linear(obs_dim, d)
        self.action_emb = nn.Linear(act_dim, d)
        self.return_emb = nn.Linear(1, d)
        self.emb_norm = nn.LayerNorm(d)
        self.emb_drop = nn.Dropout(cfg.embedding_dropout)
        self.blocks = nn.ModuleList(_Block(d, cfg.num_heads, cfg.attention_dropout, cfg.residual_dropout)
                                    for _ in range(cfg.num_layers))
        self.out_norm = nn.LayerNorm(d)
        self.action_head = nn.Linear(d, act_dim)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:  # GPT-2 / minGPT initialisation (CORL's DT uses the same)
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, states: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor, timesteps: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, K = states.shape[:2]
        t = self.timestep_emb(timesteps.long().clamp(0, self.cfg.max_ep_len - 1))
        tokens = torch.stack([self.return_emb(rtg.unsqueeze(-1)) + t, self.state_emb(states) + t,
                              self.action_emb(actions) + t], dim=2).reshape(B, 3 * K, -1)  # (R_0, s_0, a_0, R_1, ...)
        valid = torch.ones(B, K, dtype=torch.bool, device=states.device) if mask is None else mask > 0
        allowed = dt_attention_mask(valid.repeat_interleave(3, dim=1))
        h = self.emb_drop(self.emb_norm(tokens))
        for block in self.blocks:
            h = block(h, allowed)
        h = self.out_norm(h)
        return torch.tanh(self.action_head(h[:, 1::3])) * self.cfg.max_action


class DecisionTransformer:
    """The DT agent on flat features: ``update(batch)`` on sequence batches, stateful ``act`` (module docstring).

    Batch keys: ``observations`` ``(B, K, D)`` features, ``actions`` ``(B, K, A)``, ``returns_to_go`` ``(B, K)``,
    ``timesteps`` ``(B, K)``, ``mask`` ``(B, K)``.
    """

    def __init__(self, obs_dim: int, act_dim: int, cfg: DTConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.cfg = cfg = cfg or DTConfig()
        if cfg.context_len < 1:
            raise ValueError(f"dt: algo.context_len={cfg.context_len}; expected an integer >= 1 (steps per window)")
        if cfg.num_heads < 1 or cfg.embed_dim % cfg.num_heads:
            raise ValueError(f"dt: algo.num_heads={cfg.num_heads} does not divide algo.embed_dim={cfg.embed_dim} (each "
                             "attention head takes embed_dim / num_heads of it): choose a divisor, e.g. "
                             f"{', '.join(str(h) for h in range(1, 9) if cfg.embed_dim % h == 0)}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        self.actor = DTNetwork(obs_dim, act_dim, cfg).to(self.device)
        self.optimizer = torch.optim.AdamW(self.actor.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay)
        self.num_updates = 0
        self._history: dict[str, torch.Tensor] | None = None
        self._t = 0
        self.longest_episode = 0  # steps of the longest training episode (0: unknown); set by stage 2, checkpointed
        self._warned_long = False
        self._managed = False  # the last reset_episode() came from a loop that resets every episode

    # ------------------------------------------------------------------ training

    def warmup_factor(self) -> float:
        """``min((n + 1) / warmup_steps, 1)`` for update n (CORL's LambdaLR schedule)."""
        return min((self.num_updates + 1) / max(int(self.cfg.warmup_steps), 1), 1.0)

    def compute_losses(self, batch: Mapping[str, torch.Tensor],
                       with_metrics: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        pred = self.actor(batch["observations"], batch["actions"], batch[RETURNS_TO_GO], batch[TIMESTEPS],
                          batch[MASK])
        loss = dt_action_loss(pred, batch["actions"], batch[MASK])
        return {"actor": loss}, ({"dt_loss": loss.detach()} if with_metrics else {})

    def update(self, batch: Mapping[str, torch.Tensor], with_metrics: bool = True,
               extra: list[tuple[torch.optim.Optimizer, list[torch.Tensor]]] | None = None) -> dict[str, float]:
        """One step: warm-up learning rate, loss, backward, clip the gradient norm (over the transformer and the
        ``extra`` parameters, e.g. a trained image encoder with its own optimiser), step every optimiser."""
        extra = list(extra or [])
        optimizers = [self.optimizer] + [opt for opt, _ in extra]
        factor = self.warmup_factor()
        for opt in optimizers:
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * factor
        losses, metrics = self.compute_losses(batch, with_metrics)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        losses["actor"].backward()
        if self.cfg.clip_grad > 0:
            params = list(self.actor.parameters()) + [p for _, ps in extra for p in ps]
            norm = nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
            if with_metrics:
                metrics["grad_norm"] = norm.detach()
        for opt in optimizers:
            opt.step()
        self.num_updates += 1
        if with_metrics:
            metrics["lr"] = torch.tensor(self.cfg.lr * factor)
        return metrics_to_floats(metrics)

    # ------------------------------------------------------------------ acting (stateful)

    def reset_episode(self, batch: int = 1, managed: bool = False) -> None:
        """Start ``batch`` episodes: empty history, return-to-go ``target_return * reward_scale``. ``managed``: the
        caller resets at every episode's start (the toolkit's evaluation loops), so an episode past twice the longest
        training episode is the env's own length, not a forgotten reset: not warned about."""
        self._managed = managed
        z = torch.zeros
        self._history = {"states": z(batch, 0, self.obs_dim, device=self.device),
                         "actions": z(batch, 0, self.act_dim, device=self.device),
                         "rtg": torch.full((batch, 1), self.cfg.target_return * self.cfg.reward_scale,
                                           device=self.device)}
        self._t = 0  # steps taken in this episode

    def observe_reward(self, reward: float | np.ndarray) -> None:
        """After a step: ``R_{t+1} = R_t - reward_scale * r_t`` (``reward`` scalar or ``(B,)``)."""
        if self._history is None or self._history["rtg"].shape[1] != self._history["states"].shape[1]:
            raise RuntimeError("dt: observe_reward() without a preceding act() in this episode")
        h = self._history
        r = torch.as_tensor(np.asarray(reward, dtype=np.float32), device=self.device).reshape(-1)
        h["rtg"] = torch.cat([h["rtg"], (h["rtg"][:, -1] - self.cfg.reward_scale * r)[:, None]], dim=1)

    @torch.no_grad()
    def act(self, features: torch.Tensor, deterministic: bool = True) -> np.ndarray:
        """Append ``features`` ``(B, D)`` to the episode's history and return the predicted action ``(B, A)``.

        Starts an episode when none is running or the batch size changed. Deterministic (no sampling)."""
        B = features.shape[0]
        if self._history is None or self._history["states"].shape[0] != B:
            self.reset_episode(B)
        h = self._history
        assert h is not None
        if h["rtg"].shape[1] != h["states"].shape[1] + 1:
            raise RuntimeError("dt: act() twice without observe_reward() in between")
        K = self.cfg.context_len
        h["states"] = torch.cat([h["states"], features.to(self.device, torch.float32)[:, None]], dim=1)
        dummy = torch.zeros(B, 1, self.act_dim, device=self.device)  # a_t is not seen by the s_t token
        states = h["states"][:, -K:]
        actions = torch.cat([h["actions"], dummy], dim=1)[:, -K:]
        rtg = h["rtg"][:, -K:]
        steps = torch.arange(self._t - states.shape[1] + 1, self._t + 1, device=self.device).expand(B, -1)
        pad = K - states.shape[1]
        mask = torch.ones(B, states.shape[1], device=self.device)
        if pad:
            states, actions, rtg, steps, mask = (
                torch.cat([x.new_zeros(B, pad, *x.shape[2:]), x], dim=1) for x in (states, actions, rtg, steps, mask))
        was_training = self.actor.training
        self.actor.eval()
        try:
            a = self.actor(states, actions, rtg, steps, mask)[:, -1]
        finally:
            self.actor.train(was_training)
        h["actions"] = torch.cat([h["actions"], a[:, None]], dim=1)
        if h["states"].shape[1] > K:  # keep only what the next call can see
            h["states"], h["actions"], h["rtg"] = h["states"][:, 1:], h["actions"][:, 1:], h["rtg"][:, 1:]
        self._t += 1
        if self.longest_episode and self._t == 2 * self.longest_episode and not (self._warned_long or self._managed):
            self._warned_long = True
            log.warning("dt: this episode has reached step %d, twice the longest training episode (%d steps): if a new "
                        "episode began, call reset_episode() at each episode's start (else the last episode's history "
                        "and return-to-go carry over); an env whose episodes run this long can ignore this", self._t,
                        self.longest_episode)
        return a.cpu().numpy()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"algo": "dt", "config": asdict(self.cfg), "obs_dim": self.obs_dim, "act_dim": self.act_dim,
                "actor": self.actor.state_dict(), "optimizer": self.optimizer.state_dict(),
                "num_updates": self.num_updates, "longest_episode": self.longest_episode}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (int(state["obs_dim"]), int(state["act_dim"])) != (self.obs_dim, self.act_dim):
            raise ValueError(f"checkpoint is for obs_dim={state['obs_dim']}, act_dim={state['act_dim']}")
        self.actor.load_state_dict(state["actor"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_updates = int(state["num_updates"])
        self.longest_episode = int(state.get("longest_episode", 0))  # (checkpoints before it was kept: unknown)


__all__ = ["DTConfig", "DTNetwork", "DecisionTransformer", "MASK", "RETURNS_TO_GO", "TIMESTEPS", "dt_action_loss",
           "dt_attention_mask"]
