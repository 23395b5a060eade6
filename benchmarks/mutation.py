"""Mutation score of the core: plant one plausible bug at a time and see whether the relevant tests catch it.

A small driver of our own (mutmut 3 and cosmic-ray both rewrite or copy the whole project and drive their own
test discovery; here each module has a short list of test files and a run must fit in an hour on 2 shared cores).

Mutants are made by AST transformation of one module at a time (:func:`mutation_sites`):

* ``binop``: ``+ <-> -``, ``* <-> /``; ``drop``: ``a + b -> a``, ``a - b -> a``, ``a * b -> a`` and ``-> b``
  (a dropped term or coefficient);
* ``sign``: ``-x -> x``; ``not``: ``not x -> x``; ``boolop``: ``and <-> or``; ``cmp``: ``< <-> >=``, ``> <-> <=``,
  ``== <-> !=``, ``is <-> is not``, ``in <-> not in``; ``if``: ``if c: -> if not c:``;
* ``const``: a number ``c -> c / 2`` (``0 -> 1``, ints ``n -> n + 1``), ``True <-> False``, also the defaults of a
  config dataclass whose name says it is a coefficient (discount, tau, expectile, ...);
* ``swap``: two neighbouring positional arguments of a call exchanged (``f(a, b) -> f(b, a)``); ``name``: a variable,
  ``self.`` attribute or batch key replaced by its ``next_`` / ``target_`` twin or back (``obs -> next_obs``,
  ``self.critic -> self.target_critic``, ``batch["observations"] -> batch["next_observations"]``);
* ``call``: ``min <-> max``, ``minimum <-> maximum``, ``amin <-> amax``, ``argmin <-> argmax``.

Not mutated: docstrings and other strings, annotations, ``raise`` / ``assert`` statements, log, print and warning
calls, and code that only builds metrics (an assignment to a name with ``metric`` in it, an ``if with_metrics:``
body). Modules may add hand-written mutants (:data:`EXTRA_MUTANTS`, exact text replacements) where AST mutation has
no meaningful site.

Each mutant is written into a private copy of the repository (one per job, made with ``git ls-files``, so the
working tree is never edited), the module's test files run there with ``-x -q -p no:cacheprovider`` and a timeout,
and the original file is put back. A mutant is ``killed`` (the tests fail), ``survived`` (they pass), ``timeout``
(counted as killed, as mutmut does) or ``error`` (the mutated source does not compile: not counted).

Results go to ``benchmarks/results/mutation.json`` after every mutant, so an interrupted run resumes: a finished
mutant is skipped when its module's source is unchanged and it was killed or the test files are unchanged too
(new tests are given every survivor again). ``--fresh`` ignores earlier results. Each run appends its per-module
scores to ``runs`` in the JSON, which is how a before/after comparison is kept.

Equivalent mutants (no test can tell them apart from the original) are listed in :data:`EQUIVALENT` with the
reason; they are reported and excluded from the score.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/mutation.py --modules iql cql evaluation --jobs 2
    python benchmarks/mutation.py --list                      # the modules, their tests, the number of mutants
    python benchmarks/mutation.py --modules iql --show        # print every mutant's id and diff line, run nothing
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "mutation.json"

# every learner's declared next-state needs against what its losses read, each loss's gradient owner, the targets' Polyak
LEARNER_TESTS = ["tests/test_offline_family.py::test_declared_next_state_needs_match_what_the_losses_read",
                 "tests/test_offline_family.py::test_each_loss_moves_its_own_network_and_no_other",
                 "tests/test_offline_family.py::test_every_target_network_moves_by_polyak_toward_its_online_twin"]

# short name -> (module file, test files (or file::test node ids) run against its mutants)
MODULES: dict[str, tuple[str, list[str]]] = {
    "iql": ("robopretrain/algos/iql.py", ["tests/test_iql_update.py", "tests/test_iql_bc.py", "tests/test_wiring.py",
                                          *LEARNER_TESTS]),
    "cql": ("robopretrain/algos/cql.py", ["tests/test_cql_options.py", "tests/test_cql.py", "tests/test_wiring.py",
                                          *LEARNER_TESTS]),
    "bc": ("robopretrain/algos/bc.py", ["tests/test_iql_bc.py"]),
    "td3_bc": ("robopretrain/algos/td3_bc.py", ["tests/test_offline_family.py"]),
    "awac": ("robopretrain/algos/awac.py", ["tests/test_offline_family.py"]),
    "rebrac": ("robopretrain/algos/rebrac.py", ["tests/test_offline_family.py"]),
    "bcq": ("robopretrain/algos/bcq.py", ["tests/test_offline_family.py"]),
    "returns": ("robopretrain/data/returns.py", ["tests/test_returns.py", "tests/test_stage2_data_wiring.py",
                                                 "tests/test_wiring.py"]),
    "replay": ("robopretrain/data/replay.py", ["tests/test_replay.py", "tests/test_stage2_data_wiring.py",
                                               "tests/test_wiring.py", "tests/test_dataset.py::"
                                               "test_from_transitions_builds_what_the_file_loader_builds_and_warns_"
                                               "on_unrewarded_successes"]),
    "dataset": ("robopretrain/data/dataset.py", ["tests/test_dataset.py", "tests/test_stage2_data_wiring.py",
                                                 "tests/test_wiring.py", "tests/test_disk_dataset.py",
                                                 "tests/test_action_units.py", "tests/test_hdf5_reader.py::"
                                                 "test_shapes_a_new_user_stores_get_the_fix_in_the_refusal"]),
    "icvf": ("video_pretrain/objectives/icvf.py", ["tests/test_objectives.py"]),
    "vip": ("video_pretrain/objectives/vip.py", ["tests/test_objectives.py"]),
    "tcn": ("video_pretrain/objectives/tcn.py", ["tests/test_objectives.py"]),
    "sampling": ("video_pretrain/sampling.py", ["tests/test_sampling.py", "tests/test_inputs_video.py::"
                                                "test_clips_too_short_for_the_objective_are_named_or_skipped_and_counted"]),
    "evaluation": ("robopretrain/evaluation.py", ["tests/test_evaluation.py", "tests/test_wiring.py",
                                                 "tests/test_evaluate.py", "tests/test_action_units.py"]),
    "offline_loop": ("robopretrain/loops/offline.py", ["tests/test_train_offline.py", "tests/test_wiring.py",
                                                       "tests/test_compile.py", "tests/test_cuda_graph.py::"
                                                       "test_stage_loops_read_the_option_and_refuse_it_on_cpu"]),
    "online_loop": ("finetune/online.py", ["tests/test_wiring.py", "tests/test_finetune.py", "tests/test_transfer.py",
                                           "tests/test_action_units.py", "tests/test_gap_any_env.py"]),
    "por": ("robopretrain/algos/por.py", ["tests/test_por.py", "tests/test_configs.py", *LEARNER_TESTS]),
    "dt": ("robopretrain/algos/dt.py", ["tests/test_dt.py", "tests/test_configs.py"]),
    "reward_model": ("robopretrain/reward_model.py", ["tests/test_reward_model.py"]),
    "learned_reward": ("finetune/learned_reward.py", ["tests/test_learned_reward_online.py"]),  # stage 3's online
    # rewards from a preference-learned model
    "epopt": ("finetune/transfer/epopt.py", ["tests/test_transfer.py", "tests/test_gap_any_env.py"]),
    "darc": ("finetune/transfer/darc.py", ["tests/test_transfer.py"]),
    "dann": ("finetune/transfer/dann.py", ["tests/test_transfer.py"]),
    # the observation path every agent shares (normalisation, image preprocessing, the task one-hot), and the
    # statistics every claim's verdict rests on
    "obs_encoder": ("robopretrain/nets/obs_encoder.py", ["tests/test_agent.py", "tests/test_frozen_features.py"]),
    "claims_metrics": ("benchmarks/claims_metrics.py", ["tests/test_claims_metrics.py"]),
    "hdf5": ("robopretrain/data/hdf5.py", ["tests/test_hdf5_reader.py", "tests/test_dataset.py",  # the user's data
                                           "tests/test_resize_robomimic.py::test_a_camera_the_reader_refuses_but_a_"
                                           "resized_copy_reads_names_data_image_size"]),  # data.image_size named
    "spec": ("robopretrain/data/spec.py", ["tests/test_agent.py", "tests/test_checkpoint.py",  # any robot's obs spec
                                           "tests/test_hdf5_reader.py::test_a_grey_camera_is_read_as_rgb_in_memory_"
                                           "and_from_disk"]),  # grey cameras read as RGB (as_rgb)
    "agent": ("robopretrain/agent.py", ["tests/test_agent.py", "tests/test_checkpoint.py", "tests/test_network_keys.py",
                                         "tests/test_wiring.py", "tests/test_frozen_features.py", "tests/test_dt.py",
                                         "tests/test_evaluate.py", "tests/test_action_units.py",
                                         "tests/test_transfer.py::test_dann_at_zero_coefficient_leaves_the_agent_"
                                         "update_unchanged_and_on_moves_the_encoder"]),  # one API: encoders,
    # networks and learner
    "action_units": ("robopretrain/envs/action_units.py", ["tests/test_action_units.py",  # the robot's action units
                                                           "tests/test_bc_term_options.py"]),
    "gap": ("finetune/transfer/gap.py", ["tests/test_transfer.py",  # the sim-to-"real" gap every transfer tool reads
                                         "tests/test_gap_any_env.py"]),
    "randomization": ("sim_envs/randomization.py", ["tests/test_randomization.py", "tests/test_sim_envs.py",
                                                     "tests/test_transfer.py"]),  # physics and visual shifts
    "video_data": ("video_pretrain/data.py", ["tests/test_video_sources.py", "tests/test_inputs_video.py",
                                              "tests/test_sampling.py"]),  # stage 1's clip readers (any video)
    "video": ("robopretrain/data/video.py", ["tests/test_videos.py", "tests/test_inputs_video.py",
                                             "tests/test_video_sources.py"]),  # the user's clips: streams, rotation
    "bench_utils": ("benchmarks/bench_utils.py", ["tests/test_bench_utils.py", "tests/test_claims_metrics.py",
                                                  "tests/test_claims_benchmark.py", "tests/test_offline_suite.py",
                                                  "tests/test_testbed_benchmark.py"]),
    "build": ("robopretrain/build.py", ["tests/test_build.py", "tests/test_stage2_data_wiring.py",
                                        "tests/test_train_offline.py", "tests/test_bc_term_options.py",
                                        "tests/test_cpu_settings.py", "tests/test_frozen_features.py",
                                        "tests/test_transfer.py",  # the stages' shared wiring; data vs agent:
                                        "tests/test_data_formats.py::"
                                        "test_stage3_demos_and_a_mix_are_converted_at_the_agents_image_size",
                                        # the Decision Transformer's data warnings (warn_target_return, _episode_length)
                                        "tests/test_dt.py::test_a_target_return_outside_the_datas_episode_returns_is_"
                                        "warned", "tests/test_dt.py::test_episodes_longer_than_max_ep_len_are_warned",
                                        # stop 68's checks: TD3+BC's actor, cameras, the encoder's geometry
                                        "tests/test_offline_family.py::test_td3_bc_warns_when_its_actor_is_further_"
                                        "from_the_data_than_the_mean_action",
                                        "tests/test_offline_family.py::test_stage2_td3_bc_checks_its_trained_actor_on_"
                                        "its_training_data",
                                        "tests/test_target.py::test_data_camera_sources_of_a_file_a_converted_copy_"
                                        "and_through_obs_map",
                                        "tests/test_target.py::test_check_env_fits_compares_the_envs_cameras_with_the_"
                                        "agents_data",
                                        "tests/test_resize_robomimic.py::test_the_encoder_geometry_warning_reads_"
                                        "cameras_through_obs_map",
                                        "tests/test_disk_dataset.py::test_cameras_of_two_sizes_are_refused_before_a_"
                                        "frame_index_is_built",
                                        "tests/test_agent.py::test_an_augmentation_shift_past_a_quarter_of_the_frame_"
                                        "is_warned_and_a_negative_one_refused",
                                        "tests/test_data_formats.py::test_a_fresh_run_after_the_refused_resume_removes_"
                                        "the_copy_the_old_run_named",
                                        "tests/test_finetune.py::test_a_dense_target_ending_at_success_where_its_"
                                        "demos_ran_on_is_said",  # warn_success_termination; check_env_fits' side:
                                        "tests/test_gap_any_env.py::test_a_constructor_argument_the_env_refuses_"
                                        "names_the_gap_side_it_came_from",
                                        "tests/test_dt.py::test_stage2_runs_resumes_exactly_and_evaluates",
                                        "tests/test_target.py::test_data_camera_sources_of_a_resized_robomimic_copy_"
                                        "read_the_channels_from_its_source"]),
    # the user's env as a target: its construction, contract checks, action units, time limits and task slot
    "target": ("robopretrain/envs/target.py", ["tests/test_target.py", "tests/test_action_units.py",
                                               "tests/test_metaworld.py::test_a_short_task_name_is_the_v3_name_and_a_"
                                               "demo_files_time_limit_is_named",
                                               "tests/test_metaworld.py::test_a_time_limit_shorter_than_most_"
                                               "successful_demos_is_named",
                                               "tests/test_metaworld.py::test_a_target_limit_longer_than_the_envs_own_"
                                               "is_warned_about",
                                               "tests/test_evaluate.py::test_a_target_in_another_tasks_slot_or_its_"
                                               "task_in_another_slot_is_warned"]),
    # the frame index and frozen-feature files of disk-backed data: layout, CRCs, stale and killed builds
    "frames": ("robopretrain/data/frames.py", ["tests/test_disk_dataset.py", "tests/test_camera_frames.py"]),
    # other toolkits' flat files: episode ends, terminations vs time-outs, next observations, D4RL-or-OGBench .npz
    "d4rl": ("robopretrain/data/read_d4rl.py", [f"tests/test_data_formats.py::test_{name}" for name in (
        "d4rl_terminal_keeps_its_last_row_a_timeout_drops_it",
        "a_one_step_episode_is_skipped_without_renumbering_the_demos_after_it",
        "a_d4rl_file_without_timeouts_ends_episodes_where_next_observations_shows_a_reset",
        "a_d4rl_file_without_timeouts_or_next_observations_is_read_with_a_warning",
        "a_d4rl_style_npz_is_read_as_d4rl_not_as_ogbench", "d4rl_next_observations_and_success_from_the_file",
        "convert_cli_and_errors", "inspect_reads_a_foreign_format",
        "files_of_no_format_are_named_as_such_not_read_as_d4rl")]),
    "ogbench": ("robopretrain/data/read_ogbench.py", [f"tests/test_data_formats.py::test_{name}" for name in (
        "ogbench_compact_rows_and_masks", "ogbench_compact_file_cut_mid_trajectory_has_no_self_loop",
        "a_d4rl_style_npz_is_read_as_d4rl_not_as_ogbench", "cache_converts_once_and_again_when_the_source_changes",
        "inspect_reads_a_foreign_format", "ogbench_regular_layout_source_rows_and_a_done_last_transition")]),
    # claim 2b's summary (its pools, seed groups, sides and partial verdicts) and evaluation reuse
    "claims_encoder_shifts": ("benchmarks/claims_encoder_shifts.py", ["tests/test_claims_encoder_shifts.py"]),
    "pipeline": ("robopretrain/pipeline.py", ["tests/test_pipeline.py", "tests/test_paper_preset.py",
                                              "tests/test_claims_benchmark.py", "tests/test_testbed_benchmark.py",
                                              "tests/test_stage2_data_wiring.py", "tests/test_bc_term_options.py",
                                              "tests/test_action_units.py::test_the_pipeline_refuses_at_start_"
                                              "target_demos_in_units_the_target_does_not_declare",
                                              "tests/test_loggers.py::test_pipeline_names_each_stage_run_and_logs_"
                                              "the_report",
                                              "tests/test_evaluate.py::test_pipeline_evaluate_stage_runs_the_sweep_of_each_"
                                              "sim_target_into_its_folder"]),
    # checkpoint files: atomic writes, pruning, which checkpoint a resume takes, what a loaded agent is rebuilt from
    "checkpoint": ("robopretrain/checkpoint.py", ["tests/test_checkpoint.py"]),
    # stage 3's envs: episodes per env in seed order, the step budget, draining for checkpoints, worker processes
    "collector": ("robopretrain/collector.py", ["tests/test_collector.py",
                                               "tests/test_interrupts.py::test_only_the_first_vector_env_worker_says_"
                                               "the_envs_warnings"]),
}


class Equivalent(NamedTuple):
    """A mutant no test can tell from the original: ``why``, and the mutant the explanation was written for (``at``:
    its description @ the source line it mutates, stripped). An edit that renumbers a module's mutants (ids count per
    function and kind) moves an id onto another mutant; :func:`stale_equivalents` names the entries whose id no
    longer points at ``at`` (tests/test_mutation_driver.py)."""

    why: str
    at: str


# (module, mutant id) -> why it is equivalent, and which mutant that is
EQUIVALENT: dict[tuple[str, str], Equivalent] = {
    ("build", "check_task_slots/const/4"): Equivalent(
        "the fallback of the free-slot search max(used) + 1 -> + 0: never taken, range(max(used) + 2) always holds "
        "max(used) + 1, which is not used",
        "1 -> 0 @ free = next((k for k in range(max(used) + 2) if k not in used), max(used) + 1)"),
    ("build", "warn_target_return/swap/0"): Equivalent(
        "max(1.0, |low|, |high|) with its first two arguments swapped: the same maximum",
        "max(..1.0, abs(low)..) swapped @ tol = 1e-6 * max(1.0, abs(low), abs(high))"),
    ("checkpoint", "save_checkpoint/drop/0"): Equivalent(
        "the latest pointer written without its final newline: every reader strips it (_latest_candidates)",
        "final.name + '\\n' -> final.name @ write_text_atomic(root / LATEST_FILE, final.name + \"\\n\")"),
    ("checkpoint", "check_agent_fits/swap/4"): Equivalent(
        "same_units(theirs, mine) with its arguments swapped: the comparison is symmetric (both None, or equal "
        "bounds by ActionNormalization.same)",
        "same_units(..theirs_units, mine_units..) swapped @ if not same_units(theirs_units, mine_units):"),
    ("checkpoint", "set_rng_state/if/0"): Equivalent(
        "the CUDA generators' state restored only with a GPU: on this CPU-only machine neither branch's effect can "
        "be seen (a GPU run is issue 11's conditional work)",
        "if 'cuda' in state and torch.cuda.is_available(): -> if not ... @ "
        "if \"cuda\" in state and torch.cuda.is_available():"),
    ("collector", "VectorCollector.__init__/drop/1"): Equivalent(
        "the success flags' initial list: start() replaces it before any step (step() refuses to run before "
        "start)",
        "[False] * self.num_envs -> self.num_envs @ self._success = [False] * self.num_envs"),
    ("bench_utils", "write_expert_demos/binop/0"): Equivalent(
        "timeouts on step max_steps - 1 -> max_steps + 1: a time-out row belongs to a failed episode, which is refused "
        "(RuntimeError) before anything is written",
        "max_steps - 1: Sub -> Add @ (\"terminals\", done), (\"timeouts\", not done and t == max_steps - 1)):"),
    ("bench_utils", "write_expert_demos/drop/0"): Equivalent(
        "timeouts on step max_steps - 1 -> max_steps: as binop/0, a time-out row only comes with a refused episode",
        "max_steps - 1 -> max_steps @ (\"terminals\", done), (\"timeouts\", not done and t == max_steps - 1)):"),
    ("dt", "DecisionTransformer.warmup_factor/swap/0"): Equivalent(
        "min(a, 1.0) -> min(1.0, a): the smaller of two numbers whichever comes first",
        "min(..(self.num_updates + 1) / max(int(self.cfg.warmup_steps), 1), 1.0..) swapped @ "
        "return min((self.num_updates + 1) / max(int(self.cfg.warmup_steps), 1), 1.0)"),
    ("dt", "DecisionTransformer.act/const/13"): Equivalent(
        "the action history not trimmed to K (h['actions'][:, 0:]): act() reads it through [:, -K:] only, so the "
        "model sees the same K actions (the history grows by one row a step instead); states and returns-to-go, "
        "whose lengths act() checks against each other, are trimmed",
        "1 -> 0 @ h[\"states\"], h[\"actions\"], h[\"rtg\"] = "
        "h[\"states\"][:, 1:], h[\"actions\"][:, 1:], h[\"rtg\"][:, 1:]"),
    ("build", "check_task_slots/drop/0"): Equivalent(
        "range(max(used) + 2) -> range(max(used)): max(used) is used and max(used) + 1, the only other slot the "
        "longer range adds, is next()'s default anyway",
        "max(used) + 2 -> max(used) @ free = next((k for k in range(max(used) + 2) if k not in used), max(used) + 1)"),
    ("d4rl", "is_d4rl/boolop/1"): Equivalent(
        "not a file or not HDF5 -> not a file and not HDF5: a folder is no HDF5 file either way, and a file that is "
        "not HDF5 fails h5py.File, which returns False too (detect_format has checked the path exists)",
        "not p.is_file() or not h5py.is_hdf5(p): -> And @ if not p.is_file() or not h5py.is_hdf5(p):"),
    ("ogbench", "read_ogbench/const/2"): Equivalent(
        "(1 - masks) > 0.5 -> > 0.25: OGBench's masks are 0 or 1, on the same side of either threshold",
        "0.5 -> 0.25 @ done = (1.0 - z[\"masks\"].reshape(n).astype(np.float32)) > 0.5 if \"masks\" in z else "
        "np.zeros(n, bool)"),
    ("ogbench", "read_ogbench/const/6"): Equivalent(
        "the padding value of the compact trajectory ends (True -> False) sits at the last row, which is never a "
        "kept transition (a terminals row, or a cut file's final observation), so it is never read",
        "True -> False @ traj_end = np.r_[ends[1:], True][rows] if compact else ends[rows]"),
    ("cql", "CQL.compute_losses/name/2"): Equivalent(
        "b = obs.shape[0] -> next_obs.shape[0]: a batch has as many s' as s",
        "obs -> next_obs @ b = obs.shape[0]"),
    ("cql", "CQL.compute_losses/drop/0"): Equivalent(
        "max(1 + n, n + n_target) -> max(1, n + n_target): n_target >= 1, so n + n_target >= 1 + n and both give the "
        "same number of samples",
        "1 + n -> 1 @ sampled, logp = squashed_gaussian_sample(mean, log_std, max(1 + n, n + n_target))"),
    ("cql", "CQL.compute_losses/swap/22"): Equivalent(
        "sac_actor_loss(q_pi, pi_logp, alpha) -> (q_pi, alpha, pi_logp): the loss is alpha * log pi - Q, a product of "
        "the two (alpha detached either way)",
        "sac_actor_loss(..pi_logp, alpha.detach()..) swapped @ policy_loss = sac_actor_loss(q_pi, pi_logp, "
        "alpha.detach())"),
    ("cql", "td_target/const/0"): Equivalent(
        "the default alpha=0.0 -> 1.0: every caller passes alpha",
        "0.0 -> 1.0 @ alpha: torch.Tensor | float = 0.0,"),
    ("cql", "dr3_penalty/const/0"): Equivalent(
        "the default coef=1.0 -> 0.5: every caller passes cfg.dr3_coef",
        "1.0 -> 0.5 @ def dr3_penalty(phi: torch.Tensor, phi_next: torch.Tensor, coef: float = 1.0) -> torch.Tensor:"),
    ("icvf", "ICVFObjective.export_config/name/0"): Equivalent(
        "self.heads.config -> self.target_heads.config: the target heads are a deepcopy of the heads, config included",
        "self.heads -> self.target_heads @ return {**self.heads.config, \"gamma\": self.gamma, \"expectile\": "
        "self.expectile,"),
    ("replay", "OfflineDataset.from_transitions/swap/1"): Equivalent(
        "scale_rewards(rewards, scale, bias) -> (scale, rewards, bias): it computes rewards * scale + bias in float64, "
        "and the product commutes",
        "scale_rewards(..transitions.rewards, reward_scale..) swapped @ rewards = scale_rewards(transitions.rewards, "
        "reward_scale, reward_bias)"),
    ("reward_model", "held_out_split/swap/1"): Equivalent(
        "min(a, b) -> min(b, a): the smaller of two segments whichever comes first (equal ones are one segment)",
        "min(..a, b..) swapped @ first = min(a, b)  # the label as P[first segment preferred], whichever order the "
        "row wrote them in"),
    ("reward_model", "_run_holding/swap/54"): Equivalent(
        "observed_flip_rate(clean, noisy) -> (noisy, clean): |clean - noisy| is symmetric and the ties (0.5) are the "
        "same labels in both (noisy_labels never flips a tie, nor makes one)",
        "observed_flip_rate(..clean, [lab.label for lab in labels]..) swapped @ report[\"observed_flip_rate\"] = "
        "observed_flip_rate(clean, [lab.label for lab in labels])"),
    ("randomization", "DomainRandomizer.sample_distractors/swap/1"): Equivalent(
        "min(hi, max + 1) -> min(max + 1, hi): min is symmetric",
        "min(..hi, self.max_distractors + 1..) swapped @ count = int(rng.integers(lo, min(hi, self.max_distractors + "
        "1)))"),
    ("reward_model", "<module>/const/1"): Equivalent(
        "RELABEL_CHUNK 4096 -> 4097: the rows per forward pass when relabelling, each row scored alone (memory only)",
        "4096 -> 4097 @ RELABEL_CHUNK = 4096  # transitions per forward pass when relabelling a file (memory only: rows "
        "are independent)"),
    ("reward_model", "_label_row/swap/16"): Equivalent(
        "min(start_a, start_b) -> min(start_b, start_a): min is symmetric",
        "min(..lab.start_a, lab.start_b..) swapped @ if not 0.0 <= lab.label <= 1.0 or lab.length < 1 or "
        "min(lab.start_a, lab.start_b) < 0:"),
    ("frames", "FrameStore._where/swap/2"): Equivalent(
        "max(i, 0) -> max(0, i): max is symmetric",
        "max(..i, 0..) swapped @ i = min(max(i, 0), len(self.demos) - 1)"),
    ("video_data", "HDF5ImageSource._check_key/const/2"): Equivalent(
        "converted_as_camera(key, (0, *shape)) -> (1, *shape): the leading N of the stored (N, ...) shape is a "
        "placeholder, which converted_as_camera never reads (it judges shape[1:])",
        "0 -> 1 @ elif hint and converted_as_camera(f\"{self.key}_image\", (0, *shape), dtype) and shape[-1] != 1 \\"),
    ("video_data", "ManifestSource.__init__/boolop/0"): Equivalent(
        "the clip-checking progress bar's disable flag 'not check_clips or few clips' -> 'and': a display, not what "
        "is read (as ManifestSource.__init__/not/0)",
        "not check_clips or len(listed) < 64: -> And @ for entry in tqdm(listed, desc=\"checking clips\", "
        "unit=\"clip\", disable=not check_clips or len(listed) < 64,"),
    ("video_data", "ManifestSource.__init__/const/5"): Equivalent(
        "the clip-checking progress bar's threshold 64 -> 65 clips: a display, not what is read",
        "64 -> 65 @ for entry in tqdm(listed, desc=\"checking clips\", unit=\"clip\", disable=not check_clips or "
        "len(listed) < 64,"),
    ("video_data", "ManifestSource._log_sizes/const/1"): Equivalent(
        "how many clip sizes the info line lists before 'N other sizes' (4 -> 5): log text only",
        "4 -> 5 @ more = f\", {len(ranked) - 4} other sizes\" if len(ranked) > 4 else \"\""),
    ("target", "TargetEnv._obs/const/1"): Equivalent(
        "astype(np.float32, copy=False -> True) of a vector part: a copy holding the same values",
        "False -> True @ arr = arr.reshape(-1).astype(np.float32, copy=False)  # as the converters store it (as_part)"),
    ("target", "AgentActionUnits.action/const/2"): Equivalent(
        "astype(<dtype>, copy=False -> True) of the clipped env action: a copy holding the same values",
        "False -> True @ return np.clip(env_action, self._env_low, self._env_high).astype("
        "np.asarray(env_action).dtype, copy=False)"),
    ("target", "TargetEnv.__init__/const/1"): Equivalent(
        "self._steps = 0 -> 1 at construction: reset sets it to 0 before any observation is read or step counted",
        "0 -> 1 @ self._steps = 0  # steps since the reset (for the errors of _check_part)"),
    ("frames", "verified_stamp_path/const/0"): Equivalent(
        "16 -> 17 hex digits of the folder's path hash in the verified-times record's file name: any length names "
        "one file per folder, written and read by the same function",
        "16 -> 17 @ key = hashlib.sha256(str(Path(folder).expanduser().resolve()).encode()).hexdigest()[:16]"),
    ("target", "TargetEnv._obs/const/2"): Equivalent(
        "astype(np.float32, copy=False -> True) of a float picture or frame stack the agent does not read: a copy "
        "holding the same values",
        "False -> True @ arr = arr.astype(np.float32, copy=False)"),
    ("build", "warn_action_range/const/15"): Equivalent(
        "the round-off tolerance of 'narrower than [-1, 1]' 1e-6 -> 5e-7 (on the high side; as action_units' "
        "auto_bounds/const/3): both far above float32's step at 1 and far below any real narrowing",
        "1e-06 -> 5e-07 @ narrower = np.flatnonzero((low > -1.0 + 1e-6) | (high < 1.0 - 1e-6)).tolist()"),
    ("build", "warn_target_return/const/1"): Equivalent(
        "the round-off tolerance's floor max(1.0, |low|, |high|) -> max(0.5, ...): 1e-6 or 5e-7 of a return, both far "
        "below any return a demo or a target_return differs by",
        "1.0 -> 0.5 @ tol = 1e-6 * max(1.0, abs(low), abs(high))"),
    ("frames", "<module>/const/0"): Equivalent(
        "INDEX_VERSION 2 -> 3: every index is written and read with the same constant (only an index written by "
        "another version of the code would tell, and none exists in a test's fresh folder)",
        "2 -> 3 @ INDEX_VERSION = 2"),
    ("frames", "_build_holding/const/4"): Equivalent(
        "rmtree(tmp, ignore_errors=True -> False) after a failed copy: differs only when removing the partial index "
        "fails too (a second failure), then the removal's error would replace the copy's",
        "True -> False @ shutil.rmtree(tmp, ignore_errors=True)"),
    ("frames", "_write_index/const/1"): Equivalent(
        "load_transitions(images=False -> True) for the index's non-image arrays: the keys it is given are the 1-D "
        "numeric parts only (passed as low_dim too), none of them an image key, so the same arrays are read",
        "False -> True @ trans = load_transitions(source, low_dim, demos=demos, images=False, action_range=False, "
        "check_finite=False,"),
    ("dataset", "check_action_range/const/6"): Equivalent(
        "the round-off tolerance 1e-6 -> 5e-7 in the refusal's share of values outside the range (a message, after "
        "the refusal is decided with 1e-6): both far above float32's step at 1 (6e-8) and far below any real "
        "overshoot, so the same values are counted",
        "1e-06 -> 5e-07 @ share = float((np.abs(scaled) > 1.0 + 1e-6).mean())"),
    ("frames", "FrameStore._where/drop/1"): Equivalent(
        "min(..., len(demos) - 1) -> min(..., len(demos)): searchsorted(demo_rows, row, side='right') - 1 is at most "
        "len(demo_rows) - 1, and every store is built with one first row per demo",
        "len(self.demos) - 1 -> len(self.demos) @ i = min(max(i, 0), len(self.demos) - 1)"),
    ("build", "check_env_fits/const/1"): Equivalent(
        "the seed of the env check's one reset, 0 -> 1: the reset only shows the env's observation shapes, dtypes and"
        " action space, which no seed changes",
        "0 -> 1 @ obs, _ = env.reset(seed=0)"),
    ("video", "_read_png16/const/2"): Equivalent(
        "a grey 16-bit frame repeated to 4 channels instead of 3: the next line keeps the first 3 channels either way",
        "3 -> 4 @ arr = np.repeat(arr[:, :, None], 3, axis=2)"),
    ("video", "_numbered_frames/swap/0"): Equivalent(
        "the pairs of neighbouring sorted frames zipped the other way round: the same pairs of equal numbers are "
        "found, named in the other order in the refusal",
        "zip(..frames, frames[1:]..) swapped @ twice = [(n, a, b) for (n, a), (m, b) in"
        " zip(frames, frames[1:]) if n == m]"),
    ("pipeline", "_spacing_counts/const/0"): Equivalent(
        "default=1 -> 0 for a stage3.num_envs the config lacks: `or 1` turns the 0 back into 1",
        '1 -> 0 @ return int(OmegaConf.select(cfg, "stage3.num_envs", default=1) or 1) > 1'),
    ("pipeline", "target_demo_info/swap/5"): Equivalent(
        "the file's mtime and size passed to _read_demo_info in the other order: it uses them only as its lru_cache "
        "key with the path, so one version of the file is still one entry",
        "_read_demo_info(..stat.st_mtime_ns, stat.st_size..) swapped @ return _read_demo_info(str(path.resolve()), "
        "stat.st_mtime_ns, stat.st_size)"),
    ("pipeline", "reuse_collected/if/2"): Equivalent(
        "the info line saying an earlier session's demo file is kept: a log line, the file is kept either way",
        "if changed is not None: -> if not ... @ if changed is not None:"),
    ("pipeline", "reuse_collected/cmp/0"): Equivalent(
        "the same info line's condition (as reuse_collected/if/2)",
        "changed is not None: IsNot -> Is @ if changed is not None:"),
    ("pipeline", "record_session/const/0"): Equivalent(
        "mkdir(parents=True -> False) for a stage's folder: its parent, the run folder, exists (the run-folder lock "
        "made it)",
        "True -> False @ folder.mkdir(parents=True, exist_ok=True)"),
    ("pipeline", "remove_partial_files/const/0"): Equivalent(
        "rmtree(ignore_errors=True -> False) of a partial folder: differs only where the removal itself fails",
        "True -> False @ shutil.rmtree(path, ignore_errors=True)"),
    ("build", "warn_action_range/const/13"): Equivalent(
        "a tolerance of 1e-6 -> 5e-7 on a box bound's distance from -1 / 1: float32 boxes are exact at -1 and 1, "
        "and a bound off by less than 1e-6 is no box a test or env has",
        "1e-06 -> 5e-07 @ narrower = np.flatnonzero((low > -1.0 + 1e-6) | (high < 1.0 - 1e-6)).tolist()"),
    ("video", "_png_bit_depth/boolop/0"): Equivalent(
        "a PNG's bit depth read when its signature and (-> or) its first chunk's name say PNG: a .png file with one "
        "and not the other is no valid PNG, which the 16-bit reader and Pillow both refuse as unreadable",
        'head[:8] == PNG_SIGNATURE and head[12:16] == b\'IHDR\': -> Or @ return head[24] if head[:8] == PNG_SIGNATURE '
        'and head[12:16] == b"IHDR" else 8'),
    ("pipeline", "write_json/const/0"): Equivalent(
        "json.dumps(indent=2 -> 3): the layout of the stages' records, which are read back with json.loads",
        "2 -> 3 @ write_text_atomic(path, json.dumps(obj, indent=2, default=float))"),
    ("build", "load_data/const/2"): Equivalent(
        "the default units_fixed=False -> True: it only words the hint of an action-range refusal for data loaded in "
        "the agent's units, and the one caller that leaves the default (stage 2's own data) loads in the file's",
        "False -> True @ units_fixed: bool = False, slot_advice: str | None = None) -> OfflineDataset | DiskDataset:"),
    ("build", "eval_targets/const/0"): Equivalent(
        "the default num_tasks=0 -> 1: with_task_slot treats every size <= 1 as no one-hot to place a gym target in",
        "0 -> 1 @ def eval_targets(setting: Any, info: DatasetInfo, task_ids: Mapping[str, int], num_tasks: int = 0,"),
    ("returns", "episode_returns_to_go/const/5"): Equivalent(
        "one of the all-failure rule's tolerances 1e-6 -> 5e-7: rewards are float32 r * scale + bias, whose round-off "
        "from the failure reward is at most 6e-8 of it (and 0 at 0), within either tolerance, and a reward of another "
        "kind differs by far more",
        "1e-06 -> 5e-07 @ if sparse_negative_reward is not None and np.allclose(r, sparse_negative_reward, rtol=1e-6, "
        "atol=1e-6):"),
    ("video_data", "ClipSource.frames/const/1"): Equivalent(
        "the cache-size estimate's 3 bytes a pixel -> 4: it decides between decoding the whole clip into the cache and "
        "decoding only the frames asked for, which give the same frames",
        "3 -> 4 @ if self.cache.fits(self.video_length(i) * self.image_size**2 * 3):"),
    ("video_data", "ClipSource._resize/const/0"): Equivalent(
        "the once-per-source flag of the centre-crop warning True -> False: the warning repeats (a log, which the "
        "driver does not mutate either); the frames are the same",
        "True -> False @ self._crop_said = True  # once per source (per worker process)"),
    ("video_data", "ManifestSource.__init__/not/0"): Equivalent(
        "the clip-checking progress bar's disable flag: a display, not what is read",
        "not check_clips -> check_clips @ for entry in tqdm(listed, desc=\"checking clips\", unit=\"clip\", disable=not "
        "check_clips or len(listed) < 64,"),
    ("bench_utils", "write_json_atomic/const/0"): Equivalent(
        "the JSON indent 1 -> 0: the same values, other whitespace",
        "1 -> 0 @ write(path, obj, indent=1, default=float)"),
    ("bench_utils", "save_figure/const/0"): Equivalent(
        "the default figure resolution 110 -> 111 dpi: the same plot, one pixel in 110 larger",
        "110 -> 111 @ def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:"),
    ("epopt", "cvar_select/swap/0"): Equivalent(
        "max(1, k) -> max(k, 1): max is symmetric",
        "max(..1, math.ceil(float(epsilon) * r.size - 1e-09)..) swapped @ k = max(1, math.ceil(float(epsilon) * r.size "
        "- 1e-9))"),
    ("epopt", "cvar_select/const/5"): Equivalent(
        "the round-off guard 1e-9 -> 5e-10: epsilon * N lands within a few ulps (about 1e-14 at N <= 10**4) of the "
        "integer it means, far inside either guard",
        "1e-09 -> 5e-10 @ k = max(1, math.ceil(float(epsilon) * r.size - 1e-9))"),
    ("darc", "DarcClassifier.forward/binop/3"): Equivalent(
        "input noise added -> subtracted: zero-mean Gaussian noise, the same distribution either way",
        "sa + noise * torch.randn(sa.shape, generator=generator).to(sa): Add -> Sub @ sa = sa + noise * "
        "torch.randn(sa.shape, generator=generator).to(sa)"),
    ("darc", "RewardCorrection._raw/not/0"): Equivalent(
        "the tensor / array branch swapped: np.asarray of a CPU tensor and torch.as_tensor of an array give the same "
        "values (only a GPU tensor would tell them apart, which the CPU suite has none of)",
        "not torch.is_tensor(obs[k]) -> torch.is_tensor(obs[k]) @ return torch.cat([torch.as_tensor(np.asarray(obs[k]) "
        "if not torch.is_tensor(obs[k]) else obs[k],"),
    ("dann", "DomainClassifier.__init__/const/0"): Equivalent(
        "the default hidden=(64,) -> (65,): the one caller (DomainAdversary) passes transfer.dann.hidden",
        "64 -> 65 @ def __init__(self, feature_dim: int, hidden: Sequence[int] = (64,)) -> None:"),
    ("randomization", "DomainRandomizer._sample_colors/binop/0"): Equivalent(
        "the hue shift's random sign applied by * -> /: x / (+-1) = x * (+-1)",
        "sample_interval_union(rng, FACTOR_RANGES['object_hue_shift'][level]) * rng.choice([-1.0, 1.0]): Mult -> Div @ "
        "shifts = [sample_interval_union(rng, FACTOR_RANGES[\"object_hue_shift\"][level]) * rng.choice([-1.0, 1.0])"),
    ("randomization", "_shape_bounds/const/2"): Equivalent(
        "a cylinder's third size 0 -> 1: MuJoCo reads a cylinder's radius and half-height only",
        "0.0 -> 1.0 @ return mujoco.mjtGeom.mjGEOM_CYLINDER, np.array([r, h, 0.0]), float(np.hypot(r, h)), h"),
    ("randomization", "DomainRandomizer.place_distractors/const/13"): Equivalent(
        "a parked slot's quaternion (1, 0, 0, 0) -> (1, 1, 0, 0): MuJoCo normalises it to a turn of the hidden, "
        "collision-free slot below the table, which nothing sees or touches",
        "0.0 -> 1.0 @ data.qpos[qadr:qadr + 7] = [*(PARK_POS + np.array([0.1 * k, 0.0, 0.0])), 1.0, 0.0, 0.0, 0.0]"),
    ("returns", "_rows_differ/const/0"): Equivalent(
        "atol < 1 -> atol < 0 picks the float path for integer arrays too: with integers any difference is >= 1 > "
        "atol, so both paths give the same answer (the exact path only saves float64 copies)",
        "1 -> 0 @ if a.dtype.kind in \"biu\" and b.dtype.kind in \"biu\" and atol < 1:  # images: exact, without "
        "float64 copies (8x)"),
    ("returns", "_rows_differ/swap/2"): Equivalent(
        "_rows_differ(a[k], b[k]) -> (b[k], a[k]): whether two rows differ is symmetric",
        "_rows_differ(..a[k], b[k]..) swapped @ return np.logical_or.reduce([_rows_differ(a[k], b[k], atol) for k in "
        "sorted(a)])"),
    ("returns", "copies_of_obs/swap/0"): Equivalent(
        "_rows_differ(obs, next_obs) -> (next_obs, obs): whether two rows differ is symmetric",
        "_rows_differ(..obs, next_obs..) swapped @ return int(np.count_nonzero(~_rows_differ(obs, next_obs, atol)))"),
    ("returns", "sparse_return_range/swap/1"): Equivalent(
        "the transformed 1 as sparse_negative_reward(bias, scale, 1.0): 1 * scale + bias = 1 * bias + scale",
        "sparse_negative_reward(..scale, bias..) swapped @ lo, hi = sorted((sparse_negative_reward(scale, bias), "
        "sparse_negative_reward(scale, bias, 1.0)))"),
    ("returns", "sparse_return_range/swap/4"): Equivalent(
        "max(0.0, hi) -> max(hi, 0.0): max is symmetric",
        "max(..0.0, hi..) swapped @ return min(0.0, lo) / (1.0 - discount), max(0.0, hi) / (1.0 - discount)"),
    ("returns", "next_actions_of/const/0"): Equivalent(
        "len(a) > 1 -> > 0: with one action the shifted slices are empty, so the copy is returned either way",
        "1 -> 0 @ if len(a) > 1:"),
    ("dataset", "load_offline_dataset/swap/52"): Equivalent(
        "scale_rewards(rewards, scale, bias) -> (scale, rewards, bias): rewards * scale in float64 either way (a "
        "product commutes)",
        "scale_rewards(..rewards, reward.scale..) swapped @ scaled = scale_rewards(rewards, reward.scale, "
        "reward.bias)"),
    ("offline_loop", "train_offline/const/0"): Equivalent(
        "the default start=0 -> 1: the one caller (robopretrain.train) passes start",
        "0 -> 1 @ start: int = 0,"),
    ("offline_loop", "calibration_rows/const/0"): Equivalent(
        "seed 12345 -> 12346: the calibration rows only have to be fixed (the same rows at every step and after a "
        "resume); no value is specified",
        "12345 -> 12346 @ def calibration_rows(size: int, n: int, seed: int = 12345) -> np.ndarray:"),
    ("tcn", "tcn_logits/swap/0"): Equivalent(
        "neg_l2_similarity(a, b) = -||a - b|| is symmetric in its arguments (the broadcast (B, B) matrix keeps its "
        "layout)",
        "neg_l2_similarity(..anchor[:, None, :], positive[None, :, :]..) swapped @ cross = "
        "neg_l2_similarity(anchor[:, None, :], positive[None, :, :])"),
    ("tcn", "tcn_logits/swap/2"): Equivalent(
        "neg_l2_similarity(a, b) = -||a - b|| is symmetric in its arguments",
        "neg_l2_similarity(..anchor, in_video_negative..) swapped @ own = neg_l2_similarity(anchor, "
        "in_video_negative)[:, None]"),
    ("tcn", "tcn_loss/swap/10"): Equivalent(
        "neg_l2_similarity(a, b) = -||a - b|| is symmetric in its arguments (a metric of aligned frames)",
        "neg_l2_similarity(..e2, e0..) swapped @ sim_02, sim_12, sim_01 = (neg_l2_similarity(e2, e0), "
        "neg_l2_similarity(e2, e1), neg_l2_similarity(e1, e0))"),
    ("tcn", "tcn_loss/swap/11"): Equivalent(
        "neg_l2_similarity(a, b) = -||a - b|| is symmetric in its arguments (a metric of aligned frames)",
        "neg_l2_similarity(..e2, e1..) swapped @ sim_02, sim_12, sim_01 = (neg_l2_similarity(e2, e0), "
        "neg_l2_similarity(e2, e1), neg_l2_similarity(e1, e0))"),
    ("tcn", "tcn_loss/swap/12"): Equivalent(
        "neg_l2_similarity(a, b) = -||a - b|| is symmetric in its arguments (a metric of aligned frames)",
        "neg_l2_similarity(..e1, e0..) swapped @ sim_02, sim_12, sim_01 = (neg_l2_similarity(e2, e0), "
        "neg_l2_similarity(e2, e1), neg_l2_similarity(e1, e0))"),
    ("tcn", "TCNObjective.compute_loss/const/4"): Equivalent(
        "batch['video'][:, 0] -> [:, 1]: the three frames of a sample come from one video (TCNSampler), so every "
        "column holds the same id",
        "0 -> 1 @ video = batch[\"video\"][:, 0] if \"video\" in batch else None"),
    ("online_loop", "run_online/const/1"): Equivalent(
        "replay seed seed + 1 -> seed + 0: the buffer's sampling stream only has to be fixed and checkpointed (it "
        "is); no value is specified",
        "1 -> 0 @ buffer = online_buffer(agent, reward, settings.buffer_capacity, seed + 1)"),
    ("online_loop", "run_online.show/const/0"): Equivalent(
        "progress bar set_postfix(refresh=False -> True): display only",
        "False -> True @ bar.set_postfix(shown, refresh=False)"),
    ("online_loop", "run_online/not/0"): Equivalent(
        "tqdm(disable=not settings.progress) -> disable=settings.progress: whether a progress bar is drawn, nothing "
        "the run computes",
        "not settings.progress -> settings.progress @ desc=f\"online {agent.algo} {target.name} x{settings.num_envs} "
        "envs\", disable=not settings.progress)"),
    ("td3_bc", "TD3BC.compute_losses/swap/3"): Equivalent(
        "td_target(r, d, next_q, discount) -> (r, d, discount, next_q): the target is r + (1 - d) * discount * "
        "next_q, a product of the two",
        "td_target(..next_q, cfg.discount..) swapped @ target = td_target(batch[\"rewards\"], batch[\"dones\"], "
        "next_q, cfg.discount)"),
    ("awac", "awac_critic_loss/swap/0"): Equivalent(
        "bellman_loss(q_data, y) -> (y, q_data): (y - Q)^2 = (Q - y)^2 per critic, summed; same loss and gradient "
        "(shape (1, E) instead of (E,) before the sum)",
        "bellman_loss(..q_data, target.detach()..) swapped @ return bellman_loss(q_data, target.detach()).sum()"),
    ("awac", "AWAC.compute_losses/const/0"): Equivalent(
        "the default with_metrics=True -> False: every caller passes it",
        "True -> False @ self, batch: Mapping[str, torch.Tensor], with_metrics: bool = True"),
    ("rebrac", "rebrac_target/swap/0"): Equivalent(
        "bc_penalty(a', a'_data) -> (a'_data, a'): a squared distance, symmetric",
        "bc_penalty(..next_action, next_data_action..) swapped @ value = next_q - beta * bc_penalty(next_action, "
        "next_data_action)"),
    ("rebrac", "ReBRAC.compute_losses/swap/10"): Equivalent(
        "bellman_loss(q_data, y) -> (y, q_data): (y - Q)^2 = (Q - y)^2, y without gradient; same loss and gradient",
        "bellman_loss(..q_data, target..) swapped @ critic_loss = bellman_loss(q_data, target).sum()"),
    ("bcq", "BCQ.compute_losses/swap/2"): Equivalent(
        "vae_loss(recon, actions, ...) -> (actions, recon, ...): the reconstruction term is a squared error, "
        "symmetric; same loss and gradient",
        "vae_loss(..recon, actions..) swapped @ loss_vae = vae_loss(recon, actions, mean, std, cfg.kl_weight)"),
    ("replay", "ReplayBuffer.newest_indices/swap/0"): Equivalent(
        "min(n, len) -> min(len, n): min is symmetric",
        "min(..int(n), len(self)..) swapped @ count = min(int(n), len(self))"),
    ("replay", "OfflineDataset.map_observations/const/1"): Equivalent(
        "the derived sampling seed rng.integers(2**31) -> 2**32: any seed drawn from the parent's stream is valid; no "
        "value is specified",
        "31 -> 32 @ seed=int(self.rng.integers(2**31)) if seed is None else seed)"),
    ("agent", "Agent._encoded_batch/const/0"): Equivalent(
        "getattr(core, 'next_obs_needs_grad', True) -> False: every learner of robopretrain.algos declares the "
        "attribute (TD3+BC and its subclass ReBRAC, AWAC, IQL, BCQ, POR False; CQL a property), BC and the DT take "
        "other branches, so the default is read only by a user's own core, where True is the safe choice",
        "True -> False @ next_grad = bool(getattr(self.core, \"next_obs_needs_grad\", True))"),
    ("build", "report_success_filter/const/6"): Equivalent(
        "kept = mask.mean() if len(mask) else 0.0 -> 1.0: the fallback of an empty dataset, which no loader returns "
        "(a file without a demo of 2 steps or more is refused when it is read)",
        "0.0 -> 1.0 @ kept = float(mask.mean()) if len(mask) else 0.0"),
    ("build", "new_agent/const/0"): Equivalent(
        "obs_cfg.get('normalize', True) -> False: configs/robopretrain.yaml (and the pipeline's stage configs) always "
        "set obs.normalize, so the fallback is never read",
        "True -> False @ normalize = bool(obs_cfg.get(\"normalize\", True))"),
    ("build", "warn_episode_length/const/1"): Equivalent(
        "longest = ... if len(timesteps) else 0 -> 1: the fallback of data without steps, which the loaders refuse "
        "before a sampler is built",
        "0 -> 1 @ longest = int(np.max(timesteps)) + 1 if len(timesteps) else 0"),
    ("dataset", "load_offline_dataset/call/0"): Equivalent(
        "ids.min() < 0 -> ids.max() < 0: the ids come from a file, whose negative task_id attributes the reader "
        "refuses (hdf5._demo_info), or from one task_id for every demo (data.task_id / the target's), where min and "
        "max are the same",
        "ids.min(...) -> max(...) @ if spec.num_tasks and (ids.min() < 0 or ids.max() >= spec.num_tasks):"),
    ("dataset", "default_num_tasks/swap/3"): Equivalent(
        "max(len(TASKS), largest) -> max(largest, len(TASKS)): symmetric",
        "max(..len(sim_envs.TASKS), largest..) swapped @ return max(len(sim_envs.TASKS), largest)"),
    ("dataset", "default_num_tasks/swap/4"): Equivalent(
        "max(len(TASK_IDS), largest) -> max(largest, len(TASK_IDS)): symmetric (Meta-World's branch)",
        "max(..len(TASK_IDS), largest..) swapped @ return max(len(TASK_IDS), largest)"),
    ("hdf5", "action_bounds/swap/8"): Equivalent(
        "np.maximum(high, hi) -> np.maximum(hi, high): the element-wise maximum is symmetric",
        "np.maximum(..high, hi..) swapped @ high = hi if high is None else np.maximum(high, hi)"),
    ("hdf5", "_attr/boolop/0"): Equivalent(
        "isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) -> and: h5py reads a boolean "
        "attribute back as np.bool_, which is no np.integer, so both forms refuse it (tests/test_hdf5_reader.py); the "
        "one value they differ on, a Python bool, never comes out of h5py's attrs",
        "isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)): -> And @ if "
        "isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):"),
    ("hdf5", "_read_demo/const/1"): Equivalent(
        "finite: bool = True -> False in _read_demo's signature: its one caller, load_transitions, always passes it",
        "True -> False @ finite: bool = True,"),
    ("hdf5", "load_transitions/const/4"): Equivalent(
        "(0,) + shape -> (1,) + shape in the image-key test: only the number of dimensions (and the dtype) is "
        "read there",
        "0 -> 1 @ read_keys = [k for k in obs_keys if images or not _is_image_key(k, (0,) + info.obs_specs[k][0], "
        "low_dim,"),
    ("action_units", "add_whole_values/swap/0"): Equivalent(
        "np.array_equal(a, np.round(a)) -> (np.round(a), a): equality of two arrays is symmetric",
        "np.array_equal(..a, np.round(a)..) swapped @ if not np.isfinite(a).all() or not np.array_equal(a, "
        "np.round(a)):"),
    ("action_units", "ActionNormalization.same/swap/0"): Equivalent(
        "np.allclose(a, b) -> (b, a) on the low bounds: |a - b| <= 1e-6 + 1e-6 |b| differs from the swap only by "
        "1e-6 of a bound's size in the tolerance; both mean 'equal to float32 precision'",
        "np.allclose(..self.low, other.low..) swapped @ np.allclose(self.low, other.low, rtol=1e-6, atol=1e-6)"),
    ("action_units", "ActionNormalization.same/swap/1"): Equivalent(
        "as ActionNormalization.same/swap/0, on the high bounds",
        "np.allclose(..self.high, other.high..) swapped @ and np.allclose(self.high, other.high, rtol=1e-6, "
        "atol=1e-6))"),
    ("action_units", "auto_bounds/const/3"): Equivalent(
        "the float round-off tolerance of 'inside [-1, 1]' 1e-6 -> 5e-7 (on the high side; the low side's is pinned "
        "by tests): both far above float32's step at 1 (6e-8) and far below any real overshoot",
        "1e-06 -> 5e-07 @ inside = (low >= -1.0 - 1e-6) & (high <= 1.0 + 1e-6)"),
    ("action_units", "reexpress/const/2"): Equivalent(
        "the float32 round-off tolerance of 'the file moves a dimension the agent's units hold constant' 1e-5 -> "
        "5e-6: both lie above the round-off of env values of order 10 (~1e-6) and below any real movement",
        "1e-05 -> 5e-06 @ lost = fixed & np.any(np.abs(env - np.asarray(agent_units.low)) > 1e-5, "
        "axis=tuple(range(env.ndim - 1)))"),
    ("dt", "DecisionTransformer.__init__/const/3"): Equivalent(
        "self._t = 0 -> 1 at construction: no episode runs yet (_history is None), and act() starts one through "
        "reset_episode(), which sets _t = 0 before _t is read",
        "0 -> 1 @ self._t = 0"),
    ("dt", "DecisionTransformer.update/const/1"): Equivalent(
        "zero_grad(set_to_none=True) -> False: every parameter gets a gradient each update (the loss reaches all of "
        "them), so zeros + the new gradient equal the new gradient, and AdamW steps the same parameters",
        "True -> False @ opt.zero_grad(set_to_none=True)"),
    ("dt", "DecisionTransformer.act/const/0"): Equivalent(
        "the default deterministic=True -> False: DT's act() never samples (the argument is the agents' common "
        "signature and unused here)",
        "True -> False @ def act(self, features: torch.Tensor, deterministic: bool = True) -> np.ndarray:"),
    ("evaluation", "agent_target/swap/2"): Equivalent(
        "same_units(theirs, mine) -> same_units(mine, theirs): symmetric (here both are set)",
        "same_units(..theirs, mine..) swapped @ if not same_units(theirs, mine):"),
    ("build", "probe_action/swap/5"): Equivalent(
        "np.clip(middle, low, high) -> np.clip(low, middle, high): min(max(low, middle), high) either way (max is "
        "symmetric)",
        "np.clip(..middle, low..) swapped @ return np.clip(middle, low, high).astype(np.float32)"),
    ("action_units", "reexpress/swap/2"): Equivalent(
        "np.clip(out, -1, 1) -> np.clip(-1, out, 1): min(max(-1, out), 1) either way (numpy clips the first argument "
        "to [a_min, a_max] elementwise, and max is symmetric)",
        "np.clip(..out, -1.0..) swapped @ return np.clip(out, -1.0, 1.0).astype(np.float32)"),
    ("action_units", "reexpress/swap/0"): Equivalent(
        "same_units(a, b) -> same_units(b, a): symmetric (both None, or both set with equal bounds)",
        "same_units(..file_units, agent_units..) swapped @ if same_units(file_units, agent_units):"),
    ("sampling", "FrameBatchStream.__init__/const/0"): Equivalent(
        "the default seed=0 -> 1: stage 1 passes the run's seed; a default seed has no specified value",
        "0 -> 1 @ def __init__(self, source: FrameSource, objective: str, batch_size: int, seed: int = 0,"),
    ("cql", "CQL.compute_losses/swap/35"): Equivalent(
        "bellman_loss(q_data, y) -> (y, q_data): (y - Q)^2 = (Q - y)^2, y without gradient; same loss and gradient",
        "bellman_loss(..q_data, target..) swapped @ td_loss = bellman_loss(q_data, target)"),
    ("offline_loop", "train_offline.checkpoint/const/0"): Equivalent(
        "if diff != 0.0 -> != 1.0 under torchrun: whether a warning about differing replicas is logged (the "
        "difference itself is logged either way)",
        "0.0 -> 1.0 @ if diff != 0.0:"),
    ("offline_loop", "train_offline/const/6"): Equivalent(
        "tqdm(dynamic_ncols=True -> False): how the progress bar is drawn",
        "True -> False @ bar = tqdm(total=total, initial=start, desc=desc, unit=\"upd\", dynamic_ncols=True,"),
    ("offline_loop", "train_offline/const/15"): Equivalent(
        "bar.set_postfix(refresh=False -> True): display only",
        "False -> True @ bar.set_postfix(success=f\"{row['eval/success']:.2f}\", refresh=False)"),
    ("replay", "ReplayBuffer.__init__/const/0"): Equivalent(
        "the default seed=0 -> 1: the online loop passes its seed; a default seed has no specified value",
        "0 -> 1 @ seed: int = 0,"),
    ("offline_loop", "train_offline.checkpoint/if/2"): Equivalent(
        "if diff != 0.0: -> if not: under torchrun, whether the replica-difference warning is logged (a warning only; "
        "the driver does not mutate log calls themselves)",
        "if diff != 0.0: -> if not ... @ if diff != 0.0:"),
    ("offline_loop", "train_offline.checkpoint/cmp/0"): Equivalent(
        "diff != 0.0 -> == 0.0: as checkpoint/if/2, the condition of a warning only",
        "diff != 0.0: NotEq -> Eq @ if diff != 0.0:"),
    ("online_loop", "run_online/drop/0"): Equivalent(
        "replay seed seed + 1 -> seed: as run_online/const/1, the buffer's sampling stream only has to be fixed and "
        "checkpointed",
        "seed + 1 -> seed @ buffer = online_buffer(agent, reward, settings.buffer_capacity, seed + 1)"),
    ("online_loop", "run_online.add_to_buffer/swap/5"): Equivalent(
        "scale_rewards(rewards, scale, bias) -> (scale, rewards, bias): rewards * scale is a product, the same either "
        "way",
        "scale_rewards(..rewards, reward.scale..) swapped @ buffer.add_episode(ep.observations, ep.actions, "
        "scale_rewards(rewards, reward.scale, reward.bias),"),
    ("online_loop", "run_online/call/0"): Equivalent(
        "tqdm(initial=min(env_steps, total) -> max(...)): where the progress bar starts drawing, nothing the run "
        "computes",
        "min(...) -> max(...) @ bar = tqdm(total=settings.env_steps, initial=min(env_steps, settings.env_steps), "
        "unit=\"step\", dynamic_ncols=True,"),
    ("online_loop", "run_online/const/7"): Equivalent(
        "saved_transfer.get('epopt_batches', 0) -> 1: every checkpoint of a run with EPOpt stores the count, a "
        "checkpoint with other transfer settings is not resumed (its fingerprint differs), and without EPOpt it is "
        "never read",
        "0 -> 1 @ epopt_done = int(saved_transfer.get(\"epopt_batches\", 0))"),
    ("target", "AgentActionUnits.__init__/const/5"): Equivalent(
        "np.where(finite, span, 0.0 -> 1.0): the margin of a dimension without finite bounds, which the narrow test "
        "(finite & ...) never reads",
        "0.0 -> 1.0 @ margin = 0.01 * np.where(finite, own_high - own_low, 0.0)"),
    ("online_loop", "run_online/const/0"): Equivalent(
        "the default resume=True -> False: the one caller (finetune.train) passes resume=cfg.resume",
        "True -> False @ config: Any = None, meta: Mapping[str, Any] | None = None, resume: bool = True,"),
    ("online_loop", "run_online/if/2"): Equivalent(
        "if fingerprint is not None: check_resume -> if it is None: the one caller (finetune.train) always passes a "
        "fingerprint and checks the resume itself before the loop (and before DARC collects target data), so a "
        "changed run is refused there either way; the loop's check guards direct library calls",
        "if fingerprint is not None: -> if not ... @ if fingerprint is not None:"),
    ("online_loop", "run_online/const/12"): Equivalent(
        "tqdm(dynamic_ncols=True -> False): how the progress bar is drawn",
        "True -> False @ bar = tqdm(total=settings.env_steps, initial=min(env_steps, settings.env_steps), "
        "unit=\"step\", dynamic_ncols=True,"),
    ("evaluation", "write_gif/const/3"): Equivalent(
        "duration int(1000 / fps) -> int(1001 / fps): GIF stores centiseconds, the same 5 cs at the only fps used "
        "(20)",
        "1000 -> 1001 @ images[0].save(tmp, format=\"GIF\", save_all=True, append_images=images[1:], "
        "duration=int(1000 / fps), loop=0)"),
    ("por", "NextStateGuide.__init__/const/0"): Equivalent(
        "the default orthogonal_init=False -> True: the one caller (POR) passes cfg.orthogonal_init",
        "False -> True @ def __init__(self, obs_dim: int, hidden: Sequence[int], *, activation: str = \"relu\", "
        "orthogonal_init: bool = False,"),
    ("por", "NextStateGuide.sample/binop/0"): Equivalent(
        "mean + std * eps -> mean - std * eps: eps ~ N(0, 1) is symmetric, so both are draws of N(mean, std^2)",
        "mean + log_std.exp() * torch.randn_like(mean): Add -> Sub @ return mean if deterministic else mean + "
        "log_std.exp() * torch.randn_like(mean)"),
    ("por", "POR.act/cmp/0"): Equivalent(
        "single = x.dim() == 1 -> != 1: POR.act's own unsqueeze is redundant, the guide and GaussianActor.act take "
        "(S,), (B, S) and (1, B, S) alike and give (A,), (B, A), (1, B, A) -> [0]: the same actions either way",
        "x.dim() == 1: Eq -> NotEq @ single = x.dim() == 1"),
    ("dt", "DecisionTransformer.warmup_factor/swap/1"): Equivalent(
        "max(warmup_steps, 1) -> max(1, warmup_steps): max is symmetric",
        "max(..int(self.cfg.warmup_steps), 1..) swapped @ return min((self.num_updates + 1) / "
        "max(int(self.cfg.warmup_steps), 1), 1.0)"),
    ("dt", "DecisionTransformer.reset_episode/const/0"): Equivalent(
        "the default batch=1 -> 0: act() restarts the episode whenever its batch differs from the history's, so a "
        "0-row start is replaced by the same 1-row one at the first act()",
        "1 -> 0 @ def reset_episode(self, batch: int = 1, managed: bool = False) -> None:"),
    ("reward_model", "main/if/1"): Equivalent(
        "if 'relabelled' in report -> if not: whether the command line prints the relabelled file's path (report.json "
        "records it either way)",
        "if 'relabelled' in report: -> if not ... @ if \"relabelled\" in report:"),
    ("reward_model", "_run_holding/const/1"): Equivalent(
        "the default of data.skip_short_demos False -> True: configs/reward_model.yaml always holds the key (false) "
        "and the entry point composes its config from that file; the default is read only by a hand-made config "
        "without the key, no documented input",
        'False -> True @ skip_short=bool(cfg.data.get("skip_short_demos", False)))'),
    ("reward_model", "noisy_labels/const/2"): Equivalent(
        "(clean != 0.5) -> (clean != 0.25) in the flip mask: the labels are 0, 0.5 and 1, and a flipped tie is "
        "1 - 0.5 = 0.5 again, so flipping ties or not gives the same labels (the random draws are taken for every "
        "label either way)",
        "0.5 -> 0.25 @ flip = (rng.random(len(clean)) < noise) & (clean != 0.5)"),
    ("reward_model", "load_reward_model/const/0"): Equivalent(
        "torch.load(weights_only=True -> False): a file the toolkit wrote loads the same tensors either way; True "
        "only refuses pickled code",
        "True -> False @ saved = torch.load(Path(path), map_location=\"cpu\", weights_only=True)"),
    ("reward_model", "relabel_output/const/0"): Equivalent(
        "relabel.get('enabled', True) -> False: configs/reward_model.yaml always sets relabel.enabled, so the "
        "fallback is never read",
        "True -> False @ if not cfg.relabel.get(\"enabled\", True):"),
    ("darc", "DarcClassifier.forward/binop/1"): Equivalent(
        "sas + noise * eps -> sas - noise * eps: eps ~ N(0, 1) is symmetric, so both are the same Gaussian input "
        "noise",
        "sas + noise * torch.randn(sas.shape, generator=generator).to(sas): Add -> Sub @ sas = sas + noise * "
        "torch.randn(sas.shape, generator=generator).to(sas)"),
    ("obs_encoder", "ObsEncoder.image_features/boolop/1"): Equivalent(
        "self.autocast_dtype or torch.bfloat16 -> and: the dtype matters only when autocast is enabled, which is "
        "exactly when autocast_dtype is set (then both give it); disabled, torch.autocast ignores its dtype",
        "self.autocast_dtype or torch.bfloat16: -> And @ with torch.autocast(frames.device.type, "
        "dtype=self.autocast_dtype or torch.bfloat16,"),
    ("claims_metrics", "performance_dip/swap/2"): Equivalent(
        "max(0.0, x) -> max(x, 0.0): the same for every finite x, and _curve refuses values that are not finite (a "
        "NaN was the only input on which Python's max depended on the order)",
        "max(..0.0, vals[0] - vals[inside].min()..) swapped @ return float(max(0.0, vals[0] - vals[inside].min()))"),
    ("claims_metrics", "cumulative_regret/swap/2"): Equivalent(
        "np.allclose(gaps, gaps[0]) -> (gaps[0], gaps) at rtol 1e-9, atol 0: the tolerance moves by 1e-9 of the gaps' "
        "difference, below float64 resolution",
        "np.allclose(..gaps, gaps[0]..) swapped @ if gaps.size and not np.allclose(gaps, gaps[0], rtol=1e-9, "
        "atol=0.0):"),
    ("agent", "Agent.from_description/const/0"): Equivalent(
        "the default seed=0 -> 1: a default seed has no specified value (callers pass their run's seed)",
        "0 -> 1 @ device: str | torch.device = \"cpu\", seed: int = 0) -> Agent:"),
    ("agent", "Agent._encoded_batch/const/2"): Equivalent(
        "getattr(core, 'actor_reads_next_obs', True -> False) with separate encoders: the default is never read, "
        "every algorithm that reaches this branch (CQL, IQL, TD3+BC, ReBRAC, AWAC, BCQ, POR) declares the attribute",
        "True -> False @ if getattr(self.core, \"actor_reads_next_obs\", True):  # IQL's AWR only looks at s"),
    ("agent", "_as_batch/boolop/2"): Equivalent(
        "lead's 'single or rank != spec rank + 1' -> 'and': a batch of another rank then gets a lead, and the shape "
        "check refuses the first part with the same message (the 'as <first part> gives' clause names other parts "
        "only)",
        "single or len(parts[key].shape) != len(shape) + 1: -> And @ lead = () if single or len(parts[key].shape) != "
        "len(shape) + 1 else (int(parts[key].shape[0]),)"),
    ("agent", "recorded_action_units/if/3"): Equivalent(
        "if units is not None -> if not: only whether an info log line names the data file's units (describe_units "
        "takes None); the returned units are the same",
        "if units is not None: -> if not ... @ if units is not None:"),
    ("dataset", "load_offline_dataset/const/4"): Equivalent(
        "the default workers=0 -> 1: disk storage then reads ahead on one thread, and the batches are the same "
        "(indices drawn in order from the one RNG: robopretrain/data/disk.py); memory storage ignores it",
        "0 -> 1 @ workers: int = 0,"),
    ("hdf5", "_read_into/cmp/0"): Equivalent(
        "ds.dtype == out.dtype -> !=: only which read path is taken; h5py's read_direct converts to the buffer's dtype "
        "and the assignment out[lo:hi] = ds[()] casts the same way, so the values read are the same (the in-place "
        "path saves a copy)",
        "ds.dtype == out.dtype: Eq -> NotEq @ if ds.dtype == out.dtype:"),
    ("build", "warn_action_range/swap/2"): Equivalent(
        "np.allclose(low, -1.0) -> np.allclose(-1.0, low): with rtol=0 the test |a - b| <= atol is symmetric",
        "np.allclose(..low, -1.0..) swapped @ if np.allclose(low, -1.0, rtol=0.0, atol=1e-6) and np.allclose(high, 1.0, "
        "rtol=0.0, atol=1e-6):"),
    ("build", "warn_action_range/swap/3"): Equivalent(
        "np.allclose(high, 1.0) -> np.allclose(1.0, high): with rtol=0 the test |a - b| <= atol is symmetric",
        "np.allclose(..high, 1.0..) swapped @ if np.allclose(low, -1.0, rtol=0.0, atol=1e-6) and np.allclose(high, 1.0, "
        "rtol=0.0, atol=1e-6):"),
    ("build", "report_success_filter/const/8"): Equivalent(
        "len(set(tasks.values())) > 1 -> > 0: with one task slot and kept > 0 that slot holds the successes, so the "
        "per-task list of tasks without a success is empty and nothing more is logged",
        "1 -> 0 @ if kept > 0.0 and tasks and ids is not None and len(set(tasks.values())) > 1:"),
    ("hdf5", "_read_into/if/0"): Equivalent(
        "if ds.dtype == out.dtype -> if not: the same read-path swap as _read_into/cmp/0 (values read are the same)",
        "if ds.dtype == out.dtype: -> if not ... @ if ds.dtype == out.dtype:"),
    ("randomization", "DomainRandomizer.place_distractors/const/9"): Equivalent(
        "unused slots parked 0.05 m apart instead of 0.1 m: they collide with nothing (contype 0, tested) and stay "
        "out of every camera's view either way (agentview and eye-in-hand renders identical with the slots 50 m away)",
        "0.1 -> 0.05 @ data.qpos[qadr:qadr + 7] = [*(PARK_POS + np.array([0.1 * k, 0.0, 0.0])), 1.0, 0.0, 0.0, 0.0]"),
    ("video_data", "ManifestSource.__init__/const/6"): Equivalent(
        "the clip-checking progress bar's leave=False -> True: whether the finished bar stays on the terminal "
        "(display only)",
        "False -> True @ leave=False):"),
    ("video_data", "split_by_video/swap/0"): Equivalent(
        "max(1, k) -> max(k, 1): max is symmetric",
        "max(..1, int(round(valid_fraction * n))..) swapped @ n_valid = 0 if valid_fraction == 0 else max(1, "
        "int(round(valid_fraction * n)))"),
    ("pipeline", "stage1_config/swap/3"): Equivalent(
        "max(1, k) -> max(k, 1): max is symmetric",
        "max(..1, int(cfg.stage1.steps) // 3..) swapped @ \"eval_every\": max(1, int(cfg.stage1.steps) // 3), "
        "\"checkpoint_every\": max(1, int(cfg.stage1.steps) // 3),"),
    ("pipeline", "stage1_config/swap/4"): Equivalent(
        "as stage1_config/swap/3, for checkpoint_every: max is symmetric",
        "max(..1, int(cfg.stage1.steps) // 3..) swapped @ \"eval_every\": max(1, int(cfg.stage1.steps) // 3), "
        "\"checkpoint_every\": max(1, int(cfg.stage1.steps) // 3),"),
    ("pipeline", "adapt_config/const/0"): Equivalent(
        "adapt_config's default planned=False -> True: planned only names the stage-1 encoder before stage 1 has "
        "written it (the start-up check passes planned=True itself); the adapt stage runs after stage 1, whose "
        "encoder then exists and is found either way",
        "False -> True @ def adapt_config(cfg: DictConfig, run_dir: Path, target: Target, planned: bool = False) -> "
        "DictConfig:"),
    ("pipeline", "_run_stages/binop/4"): Equivalent(
        "the global torch seed before a stage, seed + i -> seed - i: every stage that draws from torch seeds it "
        "itself from its own config first (stage 1's torch.manual_seed, stages 2, adapt and 3 through "
        "build.setup_torch); the data stage draws from numpy generators of its own seeds",
        "int(cfg.seed) + STAGES.index(stage): Add -> Sub @ torch.manual_seed(int(cfg.seed) + STAGES.index(stage))"),
    ("claims_encoder_shifts", "summarize.diff/swap/6"): Equivalent(
        "min(len(xa), len(xb)) -> min(len(xb), len(xa)): symmetric",
        "min(..len(xa), len(xb)..) swapped @ if min(len(xa), len(xb)) >= 2:  # amendment 2: Welch's t on seed "
        "means beside it; a verdict needs both"),
    ("claims_encoder_shifts", "plot/const/7"): Equivalent(
        "the seed dots' zorder 3 -> 4: drawn above the bars and error bars either way (appearance only)",
        "3 -> 4 @ zorder=3)"),
    ("claims_encoder_shifts", "plot/const/10"): Equivalent(
        "the tick labels' font size 7 -> 8 (appearance only: the bars, intervals, dots and ticks are where they were)",
        "7 -> 8 @ [c.replace(\"colors_textures\", \"col+tex\").replace(\"/\", \"\\n\") for c in conds], fontsize=7)"),
    ("claims_encoder_shifts", "plot/const/13"): Equivalent(
        "the legend's font size 7 -> 8 (appearance only)", "7 -> 8 @ ax.legend(fontsize=7)"),
    ("build", "new_agent/if/2"): Equivalent(
        "if spec.rgb -> if not spec.rgb around the agent's log line only (logging: which agents print their encoder "
        "summary)",
        "if spec.rgb: -> if not ... @ if spec.rgb:"),
}

# module -> [(id, old text, new text)]: hand-written mutants where AST mutation has no meaningful site
EXTRA_MUTANTS: dict[str, list[tuple[str, str, str]]] = {}

# config dataclass fields whose default is a coefficient of the method (mutated); sizes and rates are not
COEF_FIELD = re.compile(r"discount|tau|expectile|beta|max_weight|alpha|temp|gap|coef|scale|bias|noise|clip|lmbda|"
                        r"lambda|threshold|eps")
SKIP_CALLS = {"print", "warn", "debug", "info", "warning", "error", "exception", "critical", "log", "run_print"}
CALL_SWAPS = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum", "amin": "amax", "amax": "amin",
              "argmin": "argmax", "argmax": "argmin"}
TWIN_PREFIXES = ("next_", "target_")


@dataclass
class Site:
    """One mutant: where (qualified function name, line), what kind, and a readable description."""

    qualname: str
    kind: str
    desc: str
    line: int


def _is_docstring(node: ast.AST, parent: ast.AST | None) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _twin(name: str, known: set[str]) -> list[str]:
    """The ``next_`` / ``target_`` twins of ``name`` among ``known`` names (either direction)."""
    out = []
    for p in TWIN_PREFIXES:
        if name.startswith(p) and name[len(p):] in known:
            out.append(name[len(p):])
        if p + name in known:
            out.append(p + name)
    return out


class _Walker:
    """Enumerates mutation sites in a fixed order; with ``apply=i`` mutates site ``i`` in place instead."""

    def __init__(self, tree: ast.Module, apply: int | None = None) -> None:
        self.tree, self.apply = tree, apply
        self.sites: list[Site] = []
        self.done = False
        self.names: set[str] = set()
        self.attrs: set[str] = set()
        self.keys: set[str] = set()

    # every candidate calls _offer(desc, mutate); mutate() changes the tree in place
    def _offer(self, qual: str, kind: str, desc: str, node: ast.AST, mutate) -> None:
        if self.apply == len(self.sites):
            mutate()
            self.done = True
        self.sites.append(Site(qual, kind, desc, getattr(node, "lineno", 0)))

    def run(self) -> list[Site]:
        self._body(self.tree.body, "<module>", None)
        return self.sites

    def _body(self, stmts: list[ast.stmt], qual: str, cls: ast.ClassDef | None) -> None:
        for stmt in stmts:
            self._stmt(stmt, qual, cls)

    def _stmt(self, stmt: ast.stmt, qual: str, cls: ast.ClassDef | None) -> None:
        if _is_docstring(stmt, None) or isinstance(stmt, (ast.Raise, ast.Assert, ast.Import, ast.ImportFrom,
                                                          ast.Global, ast.Nonlocal, ast.Pass)):
            return
        if isinstance(stmt, ast.ClassDef):
            is_dataclass = any("dataclass" in ast.unparse(d) for d in stmt.decorator_list)
            for s in stmt.body:
                if is_dataclass and isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name):
                    self._config_field(s, f"{stmt.name}.{s.target.id}")
                elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    self._stmt(s, f"{stmt.name}", stmt)
                elif isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant) \
                        and isinstance(s.value.value, bool):
                    v = s.value
                    self._offer(stmt.name, "const", f"{ast.unparse(s.targets[0])} = {v.value} -> {not v.value}", s,
                                lambda v=v: setattr(v, "value", not v.value))
            return
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = stmt.name if qual == "<module>" else f"{qual}.{stmt.name}"
            self.names = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)} | {
                a.arg for a in ast.walk(stmt.args) if isinstance(a, ast.arg)}
            self.attrs = set()
            if cls is not None:
                self.attrs = {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
                              and isinstance(n.value, ast.Name) and n.value.id == "self"}
            self.keys = {n.slice.value for n in ast.walk(stmt) if isinstance(n, ast.Subscript)
                         and isinstance(n.slice, ast.Constant) and isinstance(n.slice.value, str)}
            for d in stmt.args.defaults + [d for d in stmt.args.kw_defaults if d is not None]:
                self._expr(d, name, stmt.args, "defaults")
            self._body(stmt.body, name, cls)
            return
        if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any("metric" in ast.unparse(t) or ast.unparse(t) == "__all__" for t in targets):
                return
            if isinstance(stmt, ast.AugAssign):
                self._binop_kind(stmt, qual, "op")
            if stmt.value is not None:
                self._expr(stmt.value, qual, stmt, "value")
            return
        if isinstance(stmt, ast.If):
            if "metric" in ast.unparse(stmt.test):
                self._body(stmt.orelse, qual, cls)
                return
            test = stmt.test
            self._offer(qual, "if", f"if {ast.unparse(test)}: -> if not ...", stmt,
                        lambda: setattr(stmt, "test", ast.UnaryOp(ast.Not(), test)))
            self._expr(stmt.test, qual, stmt, "test")
            self._body(stmt.body, qual, cls)
            self._body(stmt.orelse, qual, cls)
            return
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and self._skip_call(stmt.value):
            return
        # other statements: their direct expression fields, then nested statement lists
        for field, value in ast.iter_fields(stmt):
            if isinstance(value, ast.expr):
                self._expr(value, qual, stmt, field)
            elif isinstance(value, list):
                if value and isinstance(value[0], ast.stmt):
                    self._body(value, qual, cls)
                elif value and isinstance(value[0], ast.expr):
                    for i in range(len(value)):
                        self._expr(value[i], qual, value, i)
                elif value and isinstance(value[0], (ast.withitem, ast.ExceptHandler)):
                    for item in value:
                        if isinstance(item, ast.ExceptHandler):
                            self._body(item.body, qual, cls)
                        else:
                            self._expr(item.context_expr, qual, item, "context_expr")

    @staticmethod
    def _skip_call(call: ast.Call) -> bool:
        f = call.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        return name in SKIP_CALLS

    def _config_field(self, s: ast.AnnAssign, qual: str) -> None:
        v = s.value
        if not isinstance(v, ast.Constant) or not isinstance(s.target, ast.Name):
            return
        if isinstance(v.value, bool):
            self._offer(qual, "const", f"default {v.value} -> {not v.value}", s,
                        lambda: setattr(v, "value", not v.value))
        elif isinstance(v.value, (int, float)) and COEF_FIELD.search(s.target.id):
            new = _new_number(v.value)
            self._offer(qual, "const", f"default {v.value!r} -> {new!r}", s, lambda: setattr(v, "value", new))

    def _binop_kind(self, node: ast.AugAssign | ast.BinOp, qual: str, _field: str) -> None:
        swaps = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
        new = swaps.get(type(node.op))
        if new is not None:
            old = type(node.op).__name__
            self._offer(qual, "binop", f"{ast.unparse(node)}: {old} -> {new.__name__}", node,
                        lambda: setattr(node, "op", new()))

    def _replace(self, holder, field, new: ast.expr) -> None:
        if isinstance(holder, list):
            holder[field] = new
        else:
            setattr(holder, field, new)

    def _expr(self, node: ast.expr, qual: str, holder, field) -> None:
        """Offer the mutants of ``node`` (``holder.field`` or ``holder[field]``), then of its children."""
        if isinstance(node, (ast.JoinedStr, ast.Lambda)):
            return
        if isinstance(node, ast.Call) and self._skip_call(node):
            return
        text = ast.unparse(node)
        if isinstance(node, ast.BinOp):
            self._binop_kind(node, qual, "op")
            if isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
                left, right = node.left, node.right
                self._offer(qual, "drop", f"{text} -> {ast.unparse(left)}", node,
                            lambda: self._replace(holder, field, left))
                if isinstance(node.op, ast.Mult):
                    self._offer(qual, "drop", f"{text} -> {ast.unparse(right)}", node,
                                lambda: self._replace(holder, field, right))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            operand = node.operand
            if not (isinstance(node.op, ast.USub) and isinstance(operand, ast.Constant)):
                kind = "sign" if isinstance(node.op, ast.USub) else "not"
                self._offer(qual, kind, f"{text} -> {ast.unparse(operand)}", node,
                            lambda: self._replace(holder, field, operand))
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            self._offer(qual, "boolop", f"{text}: -> {new.__name__}", node, lambda: setattr(node, "op", new()))
        elif isinstance(node, ast.Compare):
            swaps = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq,
                     ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
            for i, op in enumerate(node.ops):
                new = swaps[type(op)]
                self._offer(qual, "cmp", f"{text}: {type(op).__name__} -> {new.__name__}", node,
                            lambda i=i, new=new: node.ops.__setitem__(i, new()))
        elif isinstance(node, ast.Constant) and field != "slice":
            if isinstance(node.value, bool):
                self._offer(qual, "const", f"{text} -> {not node.value}", node,
                            lambda: setattr(node, "value", not node.value))
            elif isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
                new = _new_number(node.value)
                self._offer(qual, "const", f"{text} -> {new!r}", node, lambda: setattr(node, "value", new))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            for twin in _twin(node.id, self.names):
                self._offer(qual, "name", f"{node.id} -> {twin}", node, lambda twin=twin: setattr(node, "id", twin))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            for twin in _twin(node.attr, self.attrs):
                self._offer(qual, "name", f"self.{node.attr} -> self.{twin}", node,
                            lambda twin=twin: setattr(node, "attr", twin))
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str):
            for twin in _twin(node.slice.value, self.keys):
                key = node.slice
                self._offer(qual, "name", f"{text} -> [{twin!r}]", node, lambda twin=twin: setattr(key, "value", twin))
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in CALL_SWAPS:
                new = CALL_SWAPS[name]
                self._offer(qual, "call", f"{ast.unparse(f)}(...) -> {new}(...)", node,
                            lambda: setattr(f, "attr", new) if isinstance(f, ast.Attribute) else setattr(f, "id", new))
            args = node.args
            for i in range(len(args) - 1):
                a, b = args[i], args[i + 1]
                if isinstance(a, ast.Starred) or isinstance(b, ast.Starred) or ast.unparse(a) == ast.unparse(b):
                    continue
                self._offer(qual, "swap", f"{ast.unparse(f)}(..{ast.unparse(a)}, {ast.unparse(b)}..) swapped", node,
                            lambda i=i: args.__setitem__(slice(i, i + 2), [args[i + 1], args[i]]))
        # children
        for cfield, value in ast.iter_fields(node):
            if cfield in ("ctx", "op", "ops", "annotation", "returns"):
                continue
            if isinstance(value, ast.expr):
                self._expr(value, qual, node, cfield)
            elif isinstance(value, list):
                for i in range(len(value)):
                    if isinstance(value[i], ast.expr):
                        self._expr(value[i], qual, value, i)
                    elif isinstance(value[i], ast.keyword):
                        self._expr(value[i].value, qual, value[i], "value")
                    elif isinstance(value[i], ast.comprehension):
                        self._expr(value[i].iter, qual, value[i], "iter")
                        for j in range(len(value[i].ifs)):
                            self._expr(value[i].ifs[j], qual, value[i].ifs, j)


def _new_number(v: int | float) -> int | float:
    if isinstance(v, int):
        return 1 if v == 0 else v + 1 if v != 1 else 0
    if v == 0.0 or v != v or v in (float("inf"), float("-inf")):
        return 1.0 if v == 0.0 else 0.0
    return v / 2


def mutation_sites(source: str) -> list[Site]:
    """Every AST mutant of ``source``, in a fixed order (the index is the mutant's number)."""
    return _Walker(ast.parse(source)).run()


def mutate(source: str, index: int) -> str:
    """``source`` with mutant ``index`` applied (comments and formatting are not kept; the code is the same)."""
    tree = ast.parse(source)
    walker = _Walker(tree, apply=index)
    walker.run()
    if not walker.done:
        raise IndexError(f"no mutant {index}")
    return ast.unparse(tree)


@dataclass
class Mutant:
    module: str
    id: str
    desc: str
    line: int
    source: str | int  # the whole mutated file, or the AST site's number (mutated on demand)


def mutants_of(module: str) -> list[Mutant]:
    """The module's AST mutants (ids ``qualname/kind/n``, ``n`` counting that pair) and its hand-written ones."""
    path, _ = MODULES[module]
    source = (REPO / path).read_text()
    out, seen = [], {}
    for i, site in enumerate(mutation_sites(source)):
        key = f"{site.qualname}/{site.kind}"
        seen[key] = seen.get(key, -1) + 1
        out.append(Mutant(module, f"{key}/{seen[key]}", site.desc, site.line, i))
    for mid, old, new in EXTRA_MUTANTS.get(module, []):
        if source.count(old) != 1:
            raise ValueError(f"error: hand-written mutant {module}:{mid}: its text occurs {source.count(old)} times")
        out.append(Mutant(module, f"hand/{mid}", f"{old!r} -> {new!r}", source[:source.index(old)].count("\n") + 1,
                          source.replace(old, new)))
    return out


def stale_equivalents(modules: Sequence[str] | None = None) -> list[str]:
    """The EQUIVALENT entries (of ``modules``; None: all) whose id no longer names the mutant its explanation was
    written for (``Equivalent.at``: description @ source line), or names none: each as ``module:id: now ...``.
    An empty list means every explanation still describes the mutant it excludes from the score."""
    wanted = set(MODULES if modules is None else modules)
    now: dict[tuple[str, str], str] = {}
    for module in sorted({m for m, _ in EQUIVALENT} & wanted):
        lines = (REPO / MODULES[module][0]).read_text().splitlines()
        now.update({(module, m.id): f"{m.desc} @ {lines[m.line - 1].strip()}" for m in mutants_of(module)})
    found = {key: now.get(key, "no such mutant") for key in EQUIVALENT if key[0] in wanted}
    return [f"{m}:{k}: now {text!r}, written for {EQUIVALENT[(m, k)].at!r}"
            for (m, k), text in found.items() if text != EQUIVALENT[(m, k)].at]


def mutant_source(m: Mutant) -> str:
    if isinstance(m.source, int):
        return mutate((REPO / MODULES[m.module][0]).read_text(), m.source)
    return m.source


def digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update((REPO / p.split("::")[0]).read_bytes())  # a file, or a file::test node id
    return h.hexdigest()[:16]


def make_copy(root: Path) -> Path:
    """A private copy of the tracked files (and untracked, not ignored ones) of the repository under ``root``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    dest = root / "repo"
    for f in files:
        if not f or f.startswith("benchmarks/results/") or not (REPO / f).exists():
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / f).is_symlink():  # configs/ -> robopretrain/configs: the link, not a second copy
            os.symlink(os.readlink(REPO / f), dest / f)
        elif (REPO / f).is_file():
            shutil.copy2(REPO / f, dest / f)
    return dest


def run_tests(copy_root: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    """``(status, seconds, tail of output)`` of the test files in the copy: passed / failed / timeout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(copy_root), "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", *tests, "-x", "-q", "-n", "0", "-p", "no:cacheprovider",
                               "-p", "no:randomly"], cwd=copy_root, env=env, capture_output=True, text=True,
                              timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return "timeout", time.monotonic() - t0, out[-500:]
    status = "passed" if proc.returncode == 0 else "failed"
    return status, time.monotonic() - t0, (proc.stdout + proc.stderr)[-800:]


def load_results() -> dict:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text())
    return {"modules": {}, "runs": []}


def save_results(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, RESULTS)


def score(module: str, records: dict) -> dict:
    """Killed (timeouts included) over non-equivalent, compiled mutants; the survivors' ids and descriptions."""
    counted = {k: r for k, r in records.items() if (module, k) not in EQUIVALENT and r["status"] != "error"}
    killed = sum(r["status"] in ("killed", "timeout") for r in counted.values())
    survivors = {k: r["desc"] for k, r in counted.items() if r["status"] == "survived"}
    return {"mutants": len(counted), "killed": killed, "score": killed / len(counted) if counted else None,
            "survivors": survivors,
            "equivalent": {k: EQUIVALENT[(module, k)].why for k in records if (module, k) in EQUIVALENT}}


def select(mutants: list[Mutant], max_mutants: int | None) -> list[Mutant]:
    """At most ``max_mutants`` of them: a fixed random subset (seed 0), the same on every rerun."""
    if max_mutants is None or len(mutants) <= max_mutants:
        return mutants
    keep = set(random.Random(0).sample(range(len(mutants)), max_mutants))
    return [m for i, m in enumerate(mutants) if i in keep]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--modules", nargs="+", default=list(MODULES), help=f"short names: {' '.join(MODULES)}")
    p.add_argument("--max-mutants", type=int, default=None, help="per module (a fixed random subset)")
    p.add_argument("--jobs", type=int, default=1, help="mutants tested in parallel (one repository copy each)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per mutant (default: 3x the unmutated test time + 30)")
    p.add_argument("--fresh", action="store_true", help="ignore earlier results of these modules")
    p.add_argument("--list", action="store_true", help="list modules, tests and mutant counts; run nothing")
    p.add_argument("--show", action="store_true", help="print the selected mutants; run nothing")
    args = p.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        p.error(f"unknown module(s) {unknown}; known: {list(MODULES)}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    stale = stale_equivalents(args.modules)
    if stale:  # an explanation that no longer fits its mutant would hide a real survivor from the score
        p.error("EQUIVALENT entries that no longer name the mutant they explain (re-key them and their `at`):\n  "
                + "\n  ".join(stale))

    if args.list or args.show:
        for name in args.modules:
            path, tests = MODULES[name]
            ms = select(mutants_of(name), args.max_mutants)
            print(f"{name:13s} {path:38s} {len(ms):4d} mutants  tests: {' '.join(tests)}")
            if args.show:
                for m in ms:
                    print(f"    {m.id:55s} L{m.line:<4d} {m.desc}")
        return 0

    results = load_results()
    lock = Lock()
    with tempfile.TemporaryDirectory(prefix="mutation_") as tmp:
        copies = [make_copy(Path(tmp) / f"job{j}") for j in range(args.jobs)]
        free = list(copies)
        for name in args.modules:
            path, tests = MODULES[name]
            src_hash, test_hash = digest([path]), digest(tests)
            mod = results["modules"].setdefault(name, {"mutants": {}})
            if args.fresh:
                mod["mutants"] = {}
            selected = select(mutants_of(name), args.max_mutants)
            # the score is over this selection only: a mutant of an earlier version of the source (another subset
            # after the module changed) is dropped, its outcome kept in the earlier runs' summaries
            old = mod["mutants"] = {k: v for k, v in mod["mutants"].items() if k in {m.id for m in selected}}
            todo = []
            for m in selected:
                r = old.get(m.id)
                if r and r["src"] == src_hash and r["desc"] == m.desc and (r["status"] in ("killed", "timeout")
                                                                            or r["tests"] == test_hash):
                    continue
                todo.append(m)
            print(f"== {name}: {path}; {len(todo)} mutant(s) to run; tests {' '.join(tests)}", flush=True)
            if not todo:
                continue
            timeout = args.timeout
            if timeout is None:
                status, secs, out = run_tests(copies[0], tests, 1800)
                if status != "passed":
                    print(f"error: the unmutated tests of {name} do not pass:\n{out}", file=sys.stderr)
                    return 1
                timeout = 3 * secs + 30
                print(f"   unmutated tests: {secs:.1f} s; timeout per mutant {timeout:.0f} s", flush=True)

            def one(m: Mutant) -> tuple[Mutant, dict]:
                with lock:
                    root = free.pop()
                target = root / path
                original = target.read_text()
                try:
                    try:
                        new = mutant_source(m)
                        compile(new, path, "exec")
                    except (SyntaxError, ValueError) as e:
                        return m, {"status": "error", "seconds": 0.0, "output": str(e)}
                    target.write_text(new)
                    status, secs, out = run_tests(root, tests, timeout)
                    return m, {"status": {"failed": "killed", "passed": "survived"}.get(status, status),
                               "seconds": round(secs, 1), "output": out[-300:] if status == "failed" else ""}
                finally:
                    target.write_text(original)
                    with lock:
                        free.append(root)

            with ThreadPoolExecutor(args.jobs) as pool:
                for fut in as_completed([pool.submit(one, m) for m in todo]):
                    m, rec = fut.result()
                    rec.update({"desc": m.desc, "line": m.line, "src": src_hash, "tests": test_hash})
                    with lock:
                        old[m.id] = rec
                        save_results(results)
                    flag = "" if rec["status"] in ("killed", "timeout") else "  <--"
                    print(f"   {rec['status']:8s} {rec['seconds']:6.1f}s  {m.id}  L{m.line}: {m.desc}{flag}",
                          flush=True)

    summary = {}
    print("\nmodule         killed / mutants   score")
    for name in args.modules:
        s = score(name, results["modules"].get(name, {}).get("mutants", {}))
        summary[name] = {k: s[k] for k in ("mutants", "killed", "score")}
        results["modules"][name]["score"] = s
        pct = f"{100 * s['score']:.0f}%" if s["score"] is not None else "-"
        print(f"{name:14s} {s['killed']:6d} / {s['mutants']:<7d}  {pct}")
        for k, desc in sorted(s["survivors"].items()):
            print(f"    survived: {k}: {desc}")
        for k, why in sorted(s["equivalent"].items()):
            print(f"    equivalent: {k}: {why}")
    results["runs"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "max_mutants": args.max_mutants, "scores": summary})
    save_results(results)
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
