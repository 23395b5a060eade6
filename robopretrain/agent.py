"""The agent: an algorithm (CQL / Cal-QL, IQL, BC, TD3+BC, AWAC, ReBRAC, BCQ, POR, DT) behind observation encoders,
for any observation spec.

The algorithm's math lives in :mod:`robopretrain.algos` and works on flat feature vectors; this module turns
observation dicts into those vectors (:class:`~robopretrain.nets.obs_encoder.ObsEncoder`) and decides which loss
trains which encoder. One class for every observation spec: with no cameras the encoders only concatenate,
normalise and one-hot (no parameters), with cameras they run the image encoder (STYLE.md rule 1)::

    Q(s, a) = critic(critic_encoder(obs), a)    [V(s) = value(critic_encoder(obs))]    pi(a | s) = actor(actor_encoder(obs))

Encoder transfer modes (``EncoderSettings.mode``; only meaningful with cameras), from a stage-1 encoder checkpoint
(:func:`robopretrain.nets.encoder_io.load_encoder`):

``finetune``       initialise from the checkpoint and train on (V-PTR's default);
``frozen``         initialise from the checkpoint; weights never change (no gradient, eval mode);
``frozen_cached``  as ``frozen``, but the features are computed once per stored frame (:meth:`Agent.prepare`):
                   a dataset transform that replaces the cameras by a low-dim part ``features``, after which RL
                   runs on vectors (the fast CPU path);
``scratch``        the same architecture, randomly initialised (built for the cameras' image size), trained (PTR).

Where an encoder trains, images get DrQ random-shift augmentation (``augment_pad``). Actor and critic have separate
encoders (PTR) unless ``shared``; a shared encoder is trained by the critic loss only and the actor sees its
features detached (DrQ). Which loss trains which encoder:

``cql`` / ``calql``  critic encoder: the critic loss (TD + conservative penalty [+ DR3]); actor encoder: the SAC
                     actor loss;
``iql``              critic encoder: the value and critic losses (next states only enter the TD target, without
                     gradient); actor encoder: the AWR loss;
``bc``               one encoder (no critic), trained by the BC loss;
``td3_bc`` / ``rebrac`` critic encoder: the critic loss (s' only enters the target, without gradient); actor encoder:
                     the actor loss (Q term and BC term) on its updates; the target actor reads the actor encoder's
                     features of s' without gradient;
``awac``             critic encoder: the critic loss; actor encoder: the advantage-weighted likelihood (the policy's
                     samples at s' for the target carry no gradient);
``bcq``              critic encoder: the critic loss; actor encoder: the VAE loss and the perturbation (actor) loss.
``por``              critic encoder: the value loss (expectile TD on V; no Q); actor encoder: the guide's and the
                     execute policy's likelihoods. The guide predicts the critic encoder's features of s', which are
                     also the execute policy's second input, both detached (:mod:`robopretrain.algos.por`).
``dt``               one encoder (no critic), applied to every step of a K-step window, trained by the DT action
                     loss (batches from :class:`~robopretrain.data.sequences.SequenceSampler`, observations
                     ``(B, K, ...)``); acting keeps the episode's history (:meth:`Agent.reset_episode`,
                     :meth:`Agent.observe_reward`, no-ops for the other algorithms).

An algorithm class declares what the batch needs instead of being named here: ``actor_reads_next_obs`` (the actor's
features at s' are passed as ``actor_next_observations``; default True) and ``next_obs_needs_grad`` (the critic
encoder's s' pass keeps its gradient; default True; the actor encoder's s' pass never does: every loss detaches the
policy's s' samples), and ``update_targets()`` moves its target networks after each step (default: Polyak-average
``target_critic``).

Observation statistics for low-dim normalisation are computed from the offline data by the caller
(:func:`robopretrain.nets.obs_encoder.normalization_stats`) and stored inside the encoders, so every stage that
loads the agent applies the same normalisation. A frozen encoder's features are standardised the same way
(``normalize_features``, the default): :meth:`Agent.set_feature_normalization` with the statistics of
:meth:`Agent.frozen_features` over the data (:func:`robopretrain.build.fit_feature_normalization`), kept in the
encoder's buffers (``frozen``: ``feature_mean`` / ``feature_std``; ``frozen_cached``: the ``features`` part's low-dim
statistics), so both modes give the policy the same input.

Agents are float32 whatever torch's default dtype (:func:`float32`: built, updated and acting with float32 as the
default); float64 observations, batches and actions are cast to float32 on their way in.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TypeVar, Union

import numpy as np
import torch
from torch import nn

from robopretrain.algos import AGENT_NAMES, make_agent, make_config
from robopretrain.algos.base import load_optimizer_state, make_adam, metrics_to_floats
from robopretrain.data.keys import FEATURES, NEXT_OBS, OBS, TASK_ID
from robopretrain.data.sequences import MASK, TIMESTEPS
from robopretrain.data.spec import ObsSpec
from robopretrain.envs.action_units import ActionNormalization
from robopretrain.envs.action_units import describe as describe_units
from robopretrain.nets.encoder_io import load_encoder, resolve_encoder_dir
from robopretrain.nets.encoders import make_encoder
from robopretrain.nets.mlp import retain_freed_memory_once
from robopretrain.nets.obs_encoder import PRECISIONS, ObsEncoder

log = logging.getLogger(__name__)

ENCODER_MODES = ("finetune", "frozen", "frozen_cached", "scratch")
NO_CAMERA_MODE = "none"

ObsBatch = Mapping[str, Union[np.ndarray, torch.Tensor]]


@dataclass
class EncoderSettings:
    """How the image encoder is obtained and trained (the ``encoder`` config group; unused without cameras)."""

    mode: str | None = None  # finetune | frozen | frozen_cached | scratch; None: finetune with a checkpoint, else scratch
    checkpoint: str | None = None  # a stage-1 encoder folder (python -m video_pretrain.train writes <run>/encoder)
    name: str = "small_conv"  # scratch without a checkpoint: make_encoder(name, <image size>, **kwargs) (with one:
    # the checkpoint's architecture; a name or kwargs that differ are warned and ignored)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra make_encoder arguments
    shared: bool = False  # one encoder for actor and critic, trained by the critic loss only
    augment_pad: int = 4  # DrQ random shift (pixels) where the encoder trains
    lr: float = 3e-4  # encoder learning rate (finetune / scratch)
    feature_batch: int = 512  # frames per forward pass when caching features (frozen_cached)
    precision: str = "float32"  # image encoder compute: float32 | bfloat16 | float16 (autocast; changes the numbers)
    normalize_features: bool = True  # frozen / frozen_cached: standardise the features by the data's mean and std

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"encoder.precision={self.precision!r}; expected one of {list(PRECISIONS)}")

    def resolved_mode(self) -> str:
        mode = self.mode or ("finetune" if self.checkpoint else "scratch")
        if mode not in ENCODER_MODES:
            raise ValueError(f"encoder.mode={mode!r}; expected one of {list(ENCODER_MODES)} or null")
        if mode != "scratch" and not self.checkpoint:
            raise ValueError(f"encoder.mode={mode} needs encoder.checkpoint (a stage-1 encoder folder, e.g. "
                             "<stage-1 run>/encoder); or use encoder.mode=scratch")
        return mode

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> EncoderSettings:
        d = dict(d or {})
        valid = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown encoder config key(s) {unknown}; valid keys: {sorted(valid)}")
        d["kwargs"] = dict(d.get("kwargs") or {})
        return cls(**d)


def build_image_encoder(settings: EncoderSettings, image_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """The image encoder the settings ask for (random for scratch) and where its weights came from."""
    mode = settings.resolved_mode()
    if settings.checkpoint:
        settings = replace(settings, checkpoint=str(resolve_encoder_dir(settings.checkpoint)))
        encoder, meta = load_encoder(settings.checkpoint)
        asked = {**({"name": settings.name} if settings.name not in (EncoderSettings.name, meta["encoder"]) else {}),
                 **({"kwargs": settings.kwargs} if any(k not in meta["kwargs"] or meta["kwargs"][k] != v
                                                      for k, v in settings.kwargs.items()) else {})}
        if asked:  # the checkpoint's architecture wins: say so rather than train another net than asked for
            log.warning("encoder.checkpoint=%s sets the architecture (%s, %s): encoder %s ignored", settings.checkpoint,
                        meta["encoder"], meta["kwargs"], ", ".join(f"{k}={v}" for k, v in asked.items()))
        if mode == "scratch":  # the architecture, built for the cameras' size (no weights are borrowed)
            if int(meta["image_size"]) != int(image_size):
                log.info("encoder.mode=scratch: %s's architecture (%s) built for the cameras' %d px (it was trained "
                         "at %d px)", settings.checkpoint, meta["encoder"], int(image_size), int(meta["image_size"]))
            encoder = make_encoder(meta["encoder"], int(image_size), meta["in_channels"], **meta["kwargs"])
            source = {"source": "scratch", "architecture_from": str(settings.checkpoint)}
        else:
            source = {"source": str(Path(settings.checkpoint).resolve()), "meta_extra": meta.get("extra", {})}
    else:
        encoder = make_encoder(settings.name, int(image_size), **settings.kwargs)
        source = {"source": "scratch"}
    have = int(encoder.input_spec["image_size"])
    if have != int(image_size):
        raise ValueError(f"encoder.checkpoint={settings.checkpoint} takes {have} px images but the cameras give "
                         f"{image_size} px; data.image_size={have} reads the data at the encoder's size (a robomimic "
                         "file gets a cached copy with its cameras resized, another format is resized while "
                         "converting), or pretrain the encoder at the data's size (encoder.mode=scratch trains its "
                         "architecture from scratch at the cameras' size)")
    return encoder, source


def _as_batch(obs: ObsBatch, spec: ObsSpec) -> tuple[dict[str, Any], bool]:
    """The parts of ``spec`` in ``obs`` (arrays, tensors or nested lists) with a batch dimension, and whether one was
    added. Each part must have its spec's shape per observation (``(B, *shape)`` for a batch of ``B``): cameras
    ``(H, W, C)`` uint8 as rendered (or integers in [0, 255], e.g. nested lists, taken as uint8), low-dim parts
    ``(D,)``, ``task_id`` an integer in ``[0, num_tasks)`` (one for a whole batch may be a scalar; an agent of one
    task takes 0 when it is left out). Raises
    ``KeyError`` for a missing part and ``ValueError`` for a part of another shape, dtype or range, or holding NaN
    or inf, naming it and the fix (parts of the wrong sizes whose total matched were concatenated silently; a NaN
    part gave a NaN action silently)."""
    if not isinstance(obs, Mapping):
        raise TypeError(f"agent: expected an observation dict {{part: array}}, got {type(obs).__name__}")
    storage = spec.storage()
    given = sorted(obs)  # what the caller passed (not the task slot added below)
    if TASK_ID in storage and TASK_ID not in obs and spec.num_tasks == 1:  # one task: its slot is 0
        obs = {**obs, TASK_ID: 0}
    missing = [k for k in storage if k not in obs]
    if missing:
        hint = (f"; task_id is the task's slot in the agent's {spec.num_tasks}-way task one-hot, an integer in "
                f"[0, {spec.num_tasks}): a stage-2 checkpoint's meta['task_ids'] maps its task names to slots, a "
                "stage-3 checkpoint's is robopretrain.evaluate.default_target(ckpt).resolved_task_id()"
                if TASK_ID in missing else "")
        if any("." in k and k.split(".")[0] in obs for k in missing):  # an env's raw nested Dict observation
            hint += ("; nested parts are read by their dotted names (arm -> pos is 'arm.pos'): flatten the env's "
                     "observation first, robopretrain.data.episodes.flatten_obs(obs, 'step'), or act in the env "
                     "robopretrain.envs.make_env builds, which does")
        raise KeyError(f"agent: observation is missing {missing}; it has {given}{hint}")
    parts = {k: obs[k] if torch.is_tensor(obs[k]) else np.asarray(obs[k]) for k in storage}
    key, (shape, _) = next(iter(storage.items()))
    single = len(parts[key].shape) == len(shape)  # else a batch of the first part's leading size
    lead = () if single or len(parts[key].shape) != len(shape) + 1 else (int(parts[key].shape[0]),)
    if lead and TASK_ID in parts and len(parts[TASK_ID].shape) == 0:  # one task id for the whole batch
        ids = parts[TASK_ID]
        parts[TASK_ID] = ids.expand(lead[0]) if torch.is_tensor(ids) else np.broadcast_to(ids, lead)
    for k, (want, dtype) in storage.items():
        have = tuple(int(d) for d in parts[k].shape)
        if have != (want if single else (*lead, *want)) or not (single or lead):
            hint = (f"; the frames are channels first: pass np.moveaxis({k}, -3, -1)"
                    if len(want) == 3 and have[-3:] == (want[2], want[0], want[1]) else
                    f"; a camera frame of another size or layout (grey, channels first, RGBA): robopretrain.envs."
                    f"camera_frames.to_agent_frame(frame, {want[0]}) makes it the agent's RGB frame as stages 2 and 3 "
                    "do (an area-average resize; another resize shifts what the encoder sees)"
                    if dtype == np.uint8 and len(want) == 3 and len(have) >= 2 else "")
            batched = "(B, " + ", ".join(str(d) for d in want) + ")" if want else "(B,)"
            raise ValueError(f"agent: observation part {k!r} has shape {have}; the agent expects {want} per "
                             f"observation ({batched} for a batch"
                             f"{f' of B = {lead[0]}, as {key!r} gives' if lead and k != key else ''}){hint}")
        if dtype == np.uint8 and parts[k].dtype not in (np.uint8, torch.uint8):
            if _whole_bytes(parts[k]):  # integers in [0, 255] (nested lists read as int64): the frame as it is
                parts[k] = parts[k].to(torch.uint8) if torch.is_tensor(parts[k]) else parts[k].astype(np.uint8)
            else:
                raise ValueError(f"agent: camera {k!r} is {parts[k].dtype}; the agent takes uint8 frames in [0, 255] "
                                 f"as rendered (from floats in [0, 1]: (frame * 255).round().astype(np.uint8))")
        if dtype != np.uint8 and k != TASK_ID:
            finite = torch.isfinite(parts[k]) if torch.is_tensor(parts[k]) else np.isfinite(parts[k])
            if not bool(finite.all()):
                where = np.argwhere(~(finite.cpu().numpy() if torch.is_tensor(finite) else finite))[:3].tolist()
                raise ValueError(f"agent: observation part {k!r} holds NaN or inf (at index {where}"
                                 f"{', ...' if int((~finite).sum()) > 3 else ''}); the agent's action would be NaN "
                                 "(a simulator that diverged, or a sensor without a reading)")
    if TASK_ID in storage:
        ids = parts[TASK_ID]  # stored batches hold whole-number floats
        if not _is_number_array(ids):
            raise ValueError(f"agent: task_id is {ids.dtype}; expected integers in [0, {spec.num_tasks}), the slots of "
                             "the agent's task one-hot (a stage-2 checkpoint's meta['task_ids'] maps its task names "
                             "to slots)")
        count = ids.numel() if torch.is_tensor(ids) else ids.size
        fraction = bool(count) and bool((ids != (ids.round() if torch.is_tensor(ids) else np.round(ids))).any())
        low, high = (float(ids.min()), float(ids.max())) if count else (0.0, 0.0)
        if fraction or low < 0 or high >= spec.num_tasks:
            given = "not whole numbers" if fraction else f"{low:g}" if low == high else f"values {low:g}..{high:g}"
            raise ValueError(f"agent: task_id {given}; "
                             f"expected integers in [0, {spec.num_tasks}), the slots of the agent's task one-hot "
                             "(a stage-2 checkpoint's meta['task_ids'] maps its task names to slots)")
    if single:
        parts = {k: (v.unsqueeze(0) if torch.is_tensor(v) else v[None]) for k, v in parts.items()}
    return parts, single


def _is_number_array(x: Any) -> bool:
    """Whether ``x`` (array or tensor) holds integers or floats: not bools, strings or objects."""
    if torch.is_tensor(x):
        return x.dtype != torch.bool and not x.dtype.is_complex
    return x.dtype.kind in "iuf"


def _whole_bytes(x: Any) -> bool:
    """Whether ``x`` is an integer array or tensor (a frame given as nested lists reads as int64) whose values all
    lie in ``[0, 255]``: a uint8 frame in another integer type, taken as it is."""
    integer = (x.dtype not in (torch.bool, torch.uint8) and not x.dtype.is_floating_point and not x.dtype.is_complex
               if torch.is_tensor(x) else x.dtype.kind in "iu")
    return bool(integer) and (x.numel() if torch.is_tensor(x) else x.size) > 0 and 0 <= int(x.min()) \
        and int(x.max()) <= 255


def _to_tensors(parts: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: (v if torch.is_tensor(v) else torch.from_numpy(_writable(np.ascontiguousarray(v)))).to(device)
            for k, v in parts.items()}


def _writable(array: np.ndarray) -> np.ndarray:
    """``array``, or a copy when it is read-only (``np.asarray(PIL.Image)``, a memory-mapped file): torch warned that
    a tensor on it was undefined behaviour, once per process, from every ``act`` on such a frame."""
    return array if array.flags.writeable else array.copy()


def _single_precision(batch: Mapping[str, Any]) -> dict[str, Any]:
    """``batch`` with its float64 tensors (also those in an observation dict) as float32; the rest as given."""
    def cast(x: Any) -> Any:
        if isinstance(x, Mapping):
            return {k: cast(v) for k, v in x.items()}
        return x.float() if torch.is_tensor(x) and x.dtype == torch.float64 else x
    return {k: cast(v) for k, v in batch.items()}


_F = TypeVar("_F", bound=Callable[..., Any])


def float32(method: _F) -> _F:
    """Run ``method`` with float32 as torch's default dtype: the agent's networks, buffers and the tensors its
    updates and actions make are float32 whatever the caller set (``torch.set_default_dtype(torch.float64)`` built
    float64 networks that then met float32 observations: "mat1 and mat2 must have the same dtype"). The caller's
    default is restored on return. Torch's default is one per process: under a float64 default, threads calling
    agents at the same time can see each other's setting (the toolkit's own threads only convert arrays)."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        was = torch.get_default_dtype()
        if was == torch.float32:
            return method(*args, **kwargs)
        torch.set_default_dtype(torch.float32)
        try:
            return method(*args, **kwargs)
        finally:
            torch.set_default_dtype(was)
    return wrapper  # type: ignore[return-value]


class Agent:
    """An RL / BC agent on observation dicts; ``update / act / q_values / state_dict`` (see the module docstring)."""

    @float32
    def __init__(
        self,
        spec: ObsSpec,
        act_dim: int,
        algo: str = "calql",
        algo_cfg: Any = None,
        encoder: EncoderSettings | None = None,
        *,
        stats: Mapping[str, Mapping[str, list[float]]] | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        image_encoder: nn.Module | None = None,
    ) -> None:
        """``spec``: what the env and data give (cameras included, also for ``frozen_cached``); ``stats``: low-dim
        normalisation statistics (None: no normalisation); ``image_encoder``: use this module (its weights as they
        are) instead of building one from ``encoder``, how an agent is rebuilt from its own checkpoint."""
        if algo not in AGENT_NAMES:
            raise ValueError(f"unknown algorithm {algo!r}; expected one of {list(AGENT_NAMES)}")
        if int(act_dim) < 1:
            raise ValueError(f"act_dim must be >= 1, got {act_dim}")
        self.spec, self.act_dim, self.algo = spec, int(act_dim), algo
        # the env units of the agent's [-1, 1] actions (None: the env's own), fixed by the data it first trained on
        # and applied by every env it acts in (robopretrain.envs.action_units; evaluation.agent_target)
        self.action_normalization: ActionNormalization | None = None
        # each camera's frames as stored in the data stage 2 trained on, [H, W, C] (C None where unknown; None: not
        # recorded): an env whose cameras differ in proportions or in grey / colour is told (check_env_fits)
        self.camera_sources: dict[str, list[int | None]] | None = None
        self.algo_cfg = make_config(algo, algo_cfg)
        self.settings = encoder or EncoderSettings()
        self.device = torch.device(device)
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.shifts_on_device = False  # True under a CUDA-graphed update: shifts from the device's generator
        self.encoder_source: dict[str, Any] = {}
        self.mode = NO_CAMERA_MODE
        self.feature_encoder: ObsEncoder | None = None  # frozen_cached: images -> features (never trained)
        img: nn.Module | None = None
        if spec.rgb and image_encoder is None:
            self.mode = self.settings.resolved_mode()
            img, self.encoder_source = build_image_encoder(self.settings, int(spec.image_size))
        elif spec.rgb:  # rebuilt from a checkpoint: the recorded mode, the given architecture
            self.mode = self.settings.mode or "finetune"
            if self.mode not in ENCODER_MODES:
                raise ValueError(f"encoder mode {self.mode!r}; expected one of {list(ENCODER_MODES)}")
            img, self.encoder_source = image_encoder, {"source": "given"}
        if spec.rgb and self.device.type == "cpu":  # frame-sized activations: reuse freed memory (changes no result)
            retain_freed_memory_once()
        stats = dict(stats) if stats is not None else None
        precision = self.settings.precision
        if self.mode == "frozen_cached":
            assert img is not None
            self.feature_encoder = ObsEncoder(ObsSpec(rgb=spec.rgb), img, precision=precision).to(self.device)
            self.feature_encoder.requires_grad_(False).eval()
            self.train_spec = spec.cached(self.feature_encoder.out_dim)
            if stats is not None:
                stats[FEATURES] = {"mean": [0.0] * self.feature_encoder.out_dim,
                                   "std": [1.0] * self.feature_encoder.out_dim}
            img = None
        else:
            self.train_spec = spec
        pad = self.settings.augment_pad if self.trains_encoder else 0
        if pad < 0:
            raise ValueError(f"encoder.augment_pad={pad}; expected a shift in pixels >= 0 (0: none)")
        if spec.image_size and pad > spec.image_size // 4:
            log.warning("encoder.augment_pad=%d on %d px frames: shifts up to %d%% of the frame, mostly border pixels "
                        "(DrQ shifts 4 px at 84 px)", pad, spec.image_size, round(100 * pad / spec.image_size))
        self.critic_encoder = ObsEncoder(self.train_spec, img, stats=stats, augment_pad=pad, precision=precision,
                                         feature_norm=self.mode == "frozen" and self.settings.normalize_features
                                         ).to(self.device)
        separate = self.trains_encoder and not self.settings.shared and algo not in ("bc", "dt")
        self.actor_encoder = copy.deepcopy(self.critic_encoder) if separate else self.critic_encoder
        if self.mode == "frozen":
            self.critic_encoder.requires_grad_(False).eval()
        self.core = make_agent(algo, self.critic_encoder.out_dim, self.act_dim, self.algo_cfg, device=self.device)
        self.encoder_optimizer: torch.optim.Optimizer | None = None
        # extra losses on the critic's features (callables ``(agent, flat_batch, with_metrics) -> (losses, metrics)``
        # with ``optimizers()``), added to the algorithm's losses in one backward pass; empty by default
        self.auxiliary: list[Any] = []
        if self.trains_encoder:
            params = list(self.critic_encoder.parameters())
            if self.actor_encoder is not self.critic_encoder:
                params += list(self.actor_encoder.parameters())
            self.encoder_optimizer = make_adam([{"params": params, "lr": float(self.settings.lr)}])

    # ------------------------------------------------------------------ properties

    @property
    def trains_encoder(self) -> bool:
        return self.mode in ("finetune", "scratch")

    @property
    def has_q(self) -> bool:
        """Whether the algorithm has a Q-function (every one but BC, DT and POR)."""
        return hasattr(self.core, "critic")

    @property
    def feature_dim(self) -> int:
        """The size of the feature vector the algorithm sees."""
        return int(self.critic_encoder.out_dim)

    @property
    def batch_size(self) -> int:
        return int(self.algo_cfg.batch_size)

    def encoders(self) -> list[nn.Module]:
        out = [self.critic_encoder]
        if self.actor_encoder is not self.critic_encoder:
            out.append(self.actor_encoder)
        return out

    def modules(self) -> list[nn.Module]:
        """Every module with parameters or buffers that a replica must share (DDP broadcast, checks)."""
        mods: list[nn.Module] = [*self.encoders()]
        if self.feature_encoder is not None:
            mods.append(self.feature_encoder)
        for name in ("actor", "target_actor", "critic", "target_critic", "value", "target_value", "guide", "vae"):
            if hasattr(self.core, name):
                mods.append(getattr(self.core, name))
        return mods

    def compile(self, **kwargs: Any) -> None:
        """The learner computes its losses with ``torch.compile`` (:meth:`OfflineAlgorithm.compile`: same math,
        eager fallback with a warning if compiling fails); the encoders stay eager. Raises ValueError for the
        decision transformer (its sequence update has no compiled path)."""
        if not hasattr(self.core, "compile"):
            raise ValueError(f"compile=true: the {self.algo} learner has no compiled path; set compile=false")
        self.core.compile(**kwargs)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser an update steps."""
        return [self.core.optimizer] + ([self.encoder_optimizer] if self.encoder_optimizer is not None else [])

    # ------------------------------------------------------------------ observations

    @torch.no_grad()
    def prepare(self, obs: ObsBatch) -> dict[str, np.ndarray]:
        """Env or data observations (batched numpy dicts) in the form the agent stores and trains on.

        Identity for every mode but ``frozen_cached``, where the cameras are replaced by the frozen encoder's
        ``features`` (computed in chunks of ``feature_batch`` frames). Keys outside the spec are dropped.
        """
        keep = self.spec.storage_keys() if FEATURES not in obs else self.train_spec.storage_keys()
        missing = [k for k in keep if k not in obs]
        if missing:
            raise KeyError(f"agent: observation is missing {missing}; it has {sorted(obs)}")
        arrays = {k: np.asarray(obs[k]) for k in keep}
        if self.feature_encoder is None or FEATURES in obs:
            return arrays
        n = len(arrays[self.spec.rgb_keys[0]])
        step = int(self.settings.feature_batch)
        feats = np.empty((n, self.feature_encoder.out_dim), dtype=np.float32)
        for lo in range(0, n, step):
            part = {k: torch.from_numpy(np.ascontiguousarray(arrays[k][lo: lo + step])) for k in self.spec.rgb_keys}
            feats[lo: lo + step] = self.feature_encoder(part).cpu().numpy()
        out = {k: v for k, v in arrays.items() if k not in self.spec.rgb_keys}
        out[FEATURES] = feats
        return out

    @property
    def normalizes_features(self) -> bool:
        """Whether a frozen encoder's features are standardised (``frozen`` / ``frozen_cached`` with
        ``normalize_features``)."""
        return self.mode in ("frozen", "frozen_cached") and bool(self.settings.normalize_features)

    @torch.no_grad()
    def frozen_features(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """The frozen encoder's raw features ``(B, cameras * F)`` (before any feature normalisation) of a batch of
        stored observations (:meth:`prepare`'s form): the ``features`` part for ``frozen_cached``, the cameras
        through the encoder (in spec order, no augmentation) for ``frozen``. Raises ValueError for other modes."""
        if self.mode == "frozen_cached":
            return torch.as_tensor(np.asarray(obs[FEATURES]) if not torch.is_tensor(obs[FEATURES]) else obs[FEATURES],
                                   dtype=torch.float32, device=self.device)
        if self.mode != "frozen":
            raise ValueError(f"agent: frozen features need encoder.mode frozen or frozen_cached, not {self.mode!r}")
        enc = self.critic_encoder
        parts = _to_tensors({k: obs[k] for k in self.spec.rgb_keys}, self.device)
        frames = torch.cat([parts[k] for k in self.spec.rgb_keys])
        return torch.cat(enc.image_features(frames).chunk(len(self.spec.rgb), dim=0), dim=-1)

    @torch.no_grad()
    def set_feature_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardise the frozen features by ``mean`` and ``std`` ``(cameras * F,)`` (std including
        :data:`~robopretrain.nets.obs_encoder.STD_EPS`): the ``frozen`` encoder's feature buffers, or the
        ``features`` part's low-dim statistics for ``frozen_cached`` (its first low-dim part). Raises ValueError
        when the agent does not normalise features or the size differs."""
        if not self.normalizes_features:
            raise ValueError(f"agent: feature normalisation needs a frozen encoder and encoder.normalize_features "
                             f"(mode {self.mode!r}, normalize_features={self.settings.normalize_features})")
        if self.mode == "frozen":
            self.critic_encoder.set_feature_stats(mean, std)
            return
        dim = dict(self.train_spec.low_dim)[FEATURES]
        mean_t, std_t = (torch.as_tensor(np.asarray(v), dtype=torch.float32).reshape(-1) for v in (mean, std))
        if mean_t.numel() != dim or std_t.numel() != dim:
            raise ValueError(f"agent: feature statistics of size {mean_t.numel()} / {std_t.numel()}; the cached "
                             f"features have {dim}")
        self.critic_encoder.mean[:dim] = mean_t.to(self.critic_encoder.mean.device)
        self.critic_encoder.std[:dim] = std_t.to(self.critic_encoder.std.device)

    def stored_spec(self) -> ObsSpec:
        """The spec of what :meth:`prepare` returns (what buffers hold)."""
        return self.train_spec

    # ------------------------------------------------------------------ training

    @float32
    def update(self, batch: Mapping[str, Any], with_metrics: bool = True) -> dict[str, float]:
        """One gradient step of the algorithm (and of the encoders when they train); returns float metrics. Raises
        ``ValueError`` for a batch of the other kind (the Decision Transformer's K-step windows of
        :class:`robopretrain.data.sequences.SequenceSampler`, the others' rows of a dataset's ``sample``), which
        failed deep in the networks with a shape error that named neither."""
        windows = MASK in batch and TIMESTEPS in batch
        if windows != (self.algo == "dt"):
            raise ValueError(f"{self.algo}: update() got " + (
                "K-step windows (a SequenceSampler's batch); it trains on rows, e.g. OfflineDataset.sample(n)"
                if windows else "rows of transitions; the Decision Transformer trains on K-step windows, e.g. "
                "robopretrain.data.sequences.SequenceSampler(dataset, context_len).sample(n)"))
        batch = _single_precision(batch)  # one's own batch from float64 arrays (the data's are float32)
        if self.algo == "dt":
            return self._update_sequences(batch, with_metrics)
        metrics = self.step_tensors(batch, with_metrics)
        self.core.num_updates += 1
        return metrics_to_floats(metrics)

    @float32
    def step_tensors(self, batch: Mapping[str, Any], with_metrics: bool) -> dict[str, torch.Tensor]:
        """The update's device work (encoders, losses, backward, optimiser steps, target update) with metrics as
        tensors and no host sync or counter: what :mod:`robopretrain.algos.cuda_graph` captures. Not for DT."""
        if not self.trains_encoder:
            with torch.no_grad():
                flat = {**batch, OBS: self.critic_encoder(batch[OBS])}
                if self.algo != "bc":  # BC ignores next states
                    flat[NEXT_OBS] = self.critic_encoder(batch[NEXT_OBS])
            return self.core.step_tensors(flat, with_metrics)
        flat = self._encoded_batch(batch)
        losses, metrics = self.core._losses(flat, with_metrics)  # the learner's (compiled) losses, per-update phase set
        optimizers = self.optimizers()
        for extra in self.auxiliary:  # e.g. finetune.transfer.dann: a loss on the critic features, its own optimiser
            extra_losses, extra_metrics = extra(self, flat, with_metrics)
            losses, metrics = {**losses, **extra_losses}, {**metrics, **extra_metrics}
            optimizers = optimizers + list(extra.optimizers())
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        for opt in optimizers:
            opt.step()
        self.core.update_targets()  # every learner moves its own targets (Polyak by default; TD3's delayed ones)
        return metrics

    def _update_sequences(self, batch: Mapping[str, Any], with_metrics: bool) -> dict[str, float]:
        """DT: the encoder applied to each of the B x K steps (features ``(B, K, D)``), then the core's step (which
        also clips and steps the encoder's gradient when the encoder trains)."""
        obs = batch[OBS]
        lead = next(iter(obs.values())).shape[:2]
        flat_obs = {k: v.reshape(-1, *v.shape[2:]) for k, v in obs.items()}
        if self.trains_encoder:
            feats = self._encode(self.critic_encoder, flat_obs)
            assert self.encoder_optimizer is not None
            extra = [(self.encoder_optimizer, list(self.critic_encoder.parameters()))]
        else:
            with torch.no_grad():
                feats = self.critic_encoder(flat_obs)
            extra = []
        flat = {**batch, OBS: feats.reshape(*lead, -1)}
        return self.core.update(flat, with_metrics=with_metrics, extra=extra)

    @float32
    def reset_episode(self, managed: bool = False) -> None:
        """Start a new episode for algorithms that act on a history (DT); a no-op for the others. ``managed``: the
        caller resets at every episode's start (the toolkit's evaluation loops; see
        :meth:`robopretrain.algos.dt.DecisionTransformer.reset_episode`)."""
        reset = getattr(self.core, "reset_episode", None)
        if reset is not None:
            reset(managed=managed)

    def observe_reward(self, reward: float | np.ndarray) -> None:
        """The env's reward after the last :meth:`act`, for algorithms conditioned on returns (DT); else a no-op."""
        observe = getattr(self.core, "observe_reward", None)
        if observe is not None:
            observe(reward)

    def _encode(self, encoder: ObsEncoder, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # a CUDA-graphed update (robopretrain.algos.cuda_graph) draws its shifts from the device's generator
        generator = None if self.shifts_on_device else self.generator
        return encoder(obs, augment=True, generator=generator)

    def _encoded_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch with features in place of observations, with gradients to the encoders each loss may train.

        Each encoder runs once on s (with gradient) and once on s' with gradient only where a loss can reach it
        (DR3's critic features at s'); every other s' pass runs without autograd, which changes no loss and no
        gradient: CQL's s' features only feed the target critic (no gradient) and the policy's s' actions, which
        the losses detach, so their backward pass would only add zeros. The shifts are drawn from
        ``self.generator`` in the order critic s, critic s', actor s, actor s' (one ``(B * cameras, 2)`` draw
        each; shared encoder / IQL: the draws they make, in that order).
        """
        obs, next_obs = batch[OBS], batch[NEXT_OBS]
        if self.algo == "bc":  # one encoder, trained by the BC loss
            return {**batch, OBS: self._encode(self.critic_encoder, obs)}
        critic_obs = self._encode(self.critic_encoder, obs)
        # s' keeps its gradient only where a loss reaches it through these features (the algorithm declares it:
        # CQL with DR3's critic features phi(s', a'); IQL, TD3+BC, AWAC, ReBRAC, BCQ and CQL without DR3 use s' only
        # in targets or detached policy samples)
        next_grad = bool(getattr(self.core, "next_obs_needs_grad", True))
        with torch.set_grad_enabled(next_grad and torch.is_grad_enabled()):
            critic_next = self._encode(self.critic_encoder, next_obs)
        flat = {**batch, OBS: critic_obs, NEXT_OBS: critic_next}
        if self.actor_encoder is self.critic_encoder:
            flat["actor_observations"] = critic_obs.detach()
            if getattr(self.core, "actor_reads_next_obs", True):
                flat["actor_next_observations"] = critic_next.detach()
        else:
            flat["actor_observations"] = self._encode(self.actor_encoder, obs)
            if getattr(self.core, "actor_reads_next_obs", True):  # IQL's AWR only looks at s
                with torch.no_grad():  # the policy's s' samples are detached in every loss
                    flat["actor_next_observations"] = self._encode(self.actor_encoder, next_obs)
        return flat

    # ------------------------------------------------------------------ acting

    @torch.no_grad()
    @float32
    def act(self, obs: ObsBatch, deterministic: bool = True, env_units: bool = False) -> np.ndarray:
        """Action(s) ``(A,)`` or ``(B, A)`` for one observation dict or a batch, raw (as the env gives it) or
        stored (as :meth:`prepare` returns it); each part checked against the agent's spec (``ValueError`` /
        ``KeyError`` naming it).

        The actions are in the agent's units: ``[-1, 1]`` per dimension when the data's actions were rescaled
        (:attr:`action_normalization`, recorded in the checkpoint; the envs the toolkit builds map them back).
        ``env_units=True`` returns them in the robot's units (``action_normalization.to_env``; unchanged when the
        agent acts in the env's own units). A Decision Transformer acts on the episode so far: call
        :meth:`reset_episode` at each episode's start and :meth:`observe_reward` after each step."""
        if self.feature_encoder is not None and FEATURES not in obs:
            parts, single = _as_batch(obs, self.spec)
            parts = self.prepare({k: (v.cpu().numpy() if torch.is_tensor(v) else v) for k, v in parts.items()})
        else:
            parts, single = _as_batch(obs, self.train_spec)
        if not single and min(len(v) for v in parts.values()) == 0:  # an empty batch (BCQ's and DT's act failed)
            return np.zeros((0, self.act_dim), np.float32)
        actions = self.core.act(self.actor_encoder(_to_tensors(parts, self.device)), deterministic)
        if env_units and self.action_normalization is not None:
            actions = self.action_normalization.to_env(actions)
        return actions[0] if single else actions

    @torch.no_grad()
    def q_values(self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        """``min_e Q_e(s, a)`` ``(B,)`` for a batch of stored observations (not for BC)."""
        if not self.has_q:
            raise ValueError(f"agent: {self.algo!r} has no Q-function")
        parts, _ = _as_batch(obs, self.train_spec)
        actions = torch.as_tensor(actions, device=self.device)
        return self.core.q_values(self.critic_encoder(_to_tensors(parts, self.device)),
                                  actions.float() if actions.dtype == torch.float64 else actions)

    def train_mode(self, training: bool) -> None:
        """Trained encoders follow ``training``; frozen ones stay in eval mode."""
        if self.trains_encoder:
            for enc in self.encoders():
                enc.train(training)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"core": self.core.state_dict(), "critic_encoder": self.critic_encoder.state_dict()}
        if self.actor_encoder is not self.critic_encoder:
            state["actor_encoder"] = self.actor_encoder.state_dict()
        if self.feature_encoder is not None:
            state["feature_encoder"] = self.feature_encoder.state_dict()
        if self.encoder_optimizer is not None:
            state["encoder_optimizer"] = self.encoder_optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any], with_optimizer: bool = True) -> None:
        """Load weights (and the optimisers' state when ``with_optimizer``); raises on any shape mismatch. The update
        count is the checkpoint's either way (stage 3 continues CQL's count as Cal-QL, as CORL's Cal-QL does; stage 2
        from ``init=`` starts its own: :mod:`robopretrain.train`)."""
        core = dict(state["core"])
        if not with_optimizer:
            core["optimizer"] = self.core.optimizer.state_dict()
        self.core.load_state_dict(core)
        self.critic_encoder.load_state_dict(state["critic_encoder"])
        if self.actor_encoder is not self.critic_encoder:
            self.actor_encoder.load_state_dict(state.get("actor_encoder", state["critic_encoder"]))
        if self.feature_encoder is not None:
            if "feature_encoder" not in state:
                raise KeyError("feature_encoder (the checkpoint was not written by a frozen_cached agent)")
            self.feature_encoder.load_state_dict(state["feature_encoder"])
        if with_optimizer and self.encoder_optimizer is not None and "encoder_optimizer" in state:
            load_optimizer_state(self.encoder_optimizer, state["encoder_optimizer"])

    def describe(self) -> dict[str, Any]:
        """What rebuilds this agent (``meta.json``): algorithm and config, spec, action size, encoder."""
        img = None
        for enc in (self.feature_encoder, self.critic_encoder):
            if enc is not None and enc.image_encoder is not None:
                img = getattr(enc.image_encoder, "build_args", None)
                break
        return {"algo": self.algo, "algo_cfg": _jsonable(asdict(self.algo_cfg)), "act_dim": self.act_dim,
                "obs_spec": self.spec.to_dict(), "encoder_mode": self.mode,
                "encoder_settings": _jsonable(asdict(self.settings)), "image_encoder": _jsonable(img),
                "encoder_source": _jsonable(self.encoder_source),
                "action_normalization": None if self.action_normalization is None else
                self.action_normalization.to_dict(), "camera_sources": _jsonable(self.camera_sources)}

    @classmethod
    @float32
    def from_description(cls, meta: Mapping[str, Any], *, algo: str | None = None, algo_cfg: Any = None,
                         device: str | torch.device = "cpu", seed: int = 0) -> Agent:
        """An agent with the architecture ``meta`` (from :meth:`describe`) records, random weights (load them next).

        ``algo`` / ``algo_cfg`` replace the recorded algorithm (e.g. a CQL checkpoint fine-tuned as Cal-QL); the
        recorded network sizes are kept.
        """
        spec = ObsSpec.from_dict(meta["obs_spec"])
        settings = EncoderSettings.from_mapping(meta.get("encoder_settings"))
        if "normalize_features" not in dict(meta.get("encoder_settings") or {}):
            settings.normalize_features = False  # written before the option existed: no feature buffers
        if meta.get("encoder_mode") not in (None, NO_CAMERA_MODE):
            settings.mode = str(meta["encoder_mode"])
        img = None
        if spec.rgb:
            b = meta["image_encoder"]
            img = make_encoder(b["name"], int(b["image_size"]), int(b["in_channels"]), **dict(b["kwargs"]))
        saved_cfg = dict(meta.get("algo_cfg") or {})
        name = algo or str(meta["algo"])
        # another algorithm keeps only the recorded networks: the rest of the saved config (e.g. CQL's
        # use_calql=false) belongs to the recorded algorithm and would override the new one's defaults
        cfg = dict(saved_cfg) if name == meta["algo"] else {k: v for k, v in saved_cfg.items() if k in NETWORK_KEYS}
        if algo_cfg is not None:
            cfg.update({k: v for k, v in dict(algo_cfg).items() if k != "name"})
            for key in NETWORK_KEYS:
                if key in saved_cfg:
                    cfg[key] = saved_cfg[key]
        valid = set(make_config(name).__dataclass_fields__)
        cfg = {k: v for k, v in cfg.items() if k in valid}
        stats = None  # the buffers come with the weights
        agent = cls(spec, int(meta["act_dim"]), name, cfg, settings, stats=stats, device=device, seed=seed,
                    image_encoder=img)
        agent.action_normalization = recorded_action_units(meta)
        agent.camera_sources = meta.get("camera_sources")
        if spec.rgb and meta.get("encoder_source"):  # the provenance recorded, not "given" (the rebuild's own)
            agent.encoder_source = dict(meta["encoder_source"])
        return agent


def recorded_action_units(meta: Mapping[str, Any]) -> ActionNormalization | None:
    """The action units a checkpoint's ``meta`` records (None: the env's own). A checkpoint written before they were
    recorded takes those of its data file (``meta["data_path"]``) when that file is readable, so a stage-2 agent
    trained on rescaled actions acts in the robot's units and its run resumes; otherwise the env's own."""
    if "action_normalization" in meta:
        return ActionNormalization.from_mapping(meta["action_normalization"])
    path = meta.get("data_path")
    if not path:
        return None
    if not os.path.isfile(str(path)):
        log.warning("checkpoint without recorded action units: no file at its data path %s (a converted copy is "
                    "removed when its source changes); the env's own units assumed, which is wrong if that file's "
                    "actions were rescaled", path)
        return None
    from robopretrain.data.dataset import file_action_units
    from robopretrain.data.hdf5 import DatasetError, read_info

    try:
        units = file_action_units(read_info(str(path)))
    except (DatasetError, OSError) as exc:
        log.warning("checkpoint without recorded action units: its data file %s is unreadable (%s); the env's own "
                    "units assumed", path, exc)
        return None
    if units is not None:
        log.info("checkpoint without recorded action units: those of its data file %s (%s)", path,
                 describe_units(units))
    return units


# keys of an algorithm config that fix network shapes: a rebuilt agent keeps the checkpoint's
# (tests/test_network_keys.py finds every setting that changes a shape and checks that it is here)
NETWORK_KEYS = ("actor_hidden", "critic_hidden", "value_hidden", "num_critics", "critic_layer_norm", "activation",
                "guide_hidden", "num_values", "value_layer_norm", "vae_hidden", "latent_dim", "embed_dim",
                "num_layers", "num_heads", "max_ep_len")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value  # floats stay floats, inf included (json writes Infinity, Python reads it back)


__all__ = ["ENCODER_MODES", "Agent", "EncoderSettings", "NETWORK_KEYS", "build_image_encoder"]
