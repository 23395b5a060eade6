"""CPU kernel paths: every path gives the same values and gradients (fp32 tolerance below); the measured choice
is cached per machine, can be forced by the environment, and leaves training's random stream alone."""

import json
import time

import pytest
import torch

import robopretrain.nets.critic as critic_module
from robopretrain.algos.cql import CQL, CQLConfig
from robopretrain.algos.iql import IQL, IQLConfig
from robopretrain.nets import kernels
from robopretrain.nets.critic import EnsembleCritic
from robopretrain.nets.mlp import ONEDNN_AVAILABLE
from test_cql import _batch  # the same small batch

# fp32 products summed in a different order (per path, per chunk): agreement to ~1e-6 relative is typical; the
# stated tolerance for every path against PyTorch autograd is atol 1e-5, rtol 1e-4.
TOL = {"atol": 1e-5, "rtol": 1e-4}
PATHS = ["mm", "mm_par", "bmm", *(["onednn"] if ONEDNN_AVAILABLE else [])]


@pytest.fixture(autouse=True)
def _isolated_choices(tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(kernels.ENV_KERNEL, raising=False)
    monkeypatch.setattr(kernels, "_choices", {})
    monkeypatch.setattr(kernels, "_linear_memo", {})
    monkeypatch.setattr(kernels, "_probe_log", {})


def _critic_outputs(critic, obs, acts, weights):
    critic.zero_grad(set_to_none=True)
    obs.grad = acts.grad = None
    q, feats = critic(obs, acts, return_features=True)
    (q.square().sum() + (feats * weights).sum()).backward()
    with torch.no_grad():
        q_nograd = critic(obs, acts)
    return [q, feats, obs.grad, acts.grad, *[p.grad for p in critic.parameters()], q_nograd]


@pytest.mark.parametrize("chunk_rows", [5, 1024])
@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("hidden", [(16,), (16, 12), (8, 16, 8)])
def test_every_critic_path_matches_autograd(hidden, n, chunk_rows, monkeypatch):
    monkeypatch.setattr(critic_module, "CHUNK_ROWS", chunk_rows)  # 5 rows: many chunks, a ragged last one
    torch.manual_seed(0)
    critic = EnsembleCritic(5, 3, hidden, num_critics=3)
    obs = torch.randn(6, 5, requires_grad=True)
    acts = torch.rand(6, n, 3, requires_grad=True)
    weights = torch.randn(3, 6, n, hidden[-1])
    critic.fast_path = False
    ref = _critic_outputs(critic, obs, acts, weights)
    critic.fast_path = True
    for path in PATHS:
        critic.kernel = path
        out = _critic_outputs(critic, obs, acts, weights)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, p=path: f"path {p}: {m}")


def test_critic_paths_agree_at_the_benchmark_size():
    torch.manual_seed(0)
    critic = EnsembleCritic(39, 4, (256, 256), num_critics=2, orthogonal_init=True)
    obs, acts = torch.randn(64, 39), torch.rand(64, 31, 4) * 2 - 1  # 1984 rows: two chunks of the "mm" path
    results = {}
    for path in ["generic", *PATHS]:
        critic.fast_path = path != "generic"
        critic.kernel = path if path != "generic" else "auto"
        critic.zero_grad(set_to_none=True)
        q = critic(obs, acts)
        torch.logsumexp(q, -1).sum().backward()
        results[path] = [q, *[p.grad for p in critic.parameters()]]
    for path in PATHS:
        for a, b in zip(results[path], results["generic"]):
            torch.testing.assert_close(a, b, **TOL)


def _losses_and_grads(algo, generic):
    torch.manual_seed(0)
    if algo == "calql":
        agent = CQL(6, 3, CQLConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), n_actions=4, use_calql=True))
    elif algo == "cql_dr3":
        agent = CQL(6, 3, CQLConfig(actor_hidden=(32,), critic_hidden=(32, 32), n_actions=4, dr3_coef=0.1))
    else:
        agent = IQL(6, 3, IQLConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), value_hidden=(32, 32)))
    if generic:
        agent.critic.fast_path = agent.target_critic.fast_path = False
    params = [p for group in agent.optimizer.param_groups for p in group["params"] if p.requires_grad]
    torch.manual_seed(1)
    losses, _ = agent.compute_losses(_batch(obs_dim=6, act_dim=3, seed=3))
    grads = torch.autograd.grad(sum(losses.values()), params)
    return [*losses.values(), *grads]


@pytest.mark.parametrize("algo", ["calql", "cql_dr3", "iql"])
def test_losses_and_gradients_are_the_same_on_every_path(algo, monkeypatch):
    """The whole update's losses and gradients, per forced path (critic and MLP layers), against plain autograd."""
    monkeypatch.setattr(critic_module, "CHUNK_ROWS", 20)  # 16 states x 13 actions: several chunks
    monkeypatch.setenv(kernels.ENV_KERNEL, "aten")
    ref = _losses_and_grads(algo, generic=True)
    for path in [*PATHS, "aten"]:
        monkeypatch.setenv(kernels.ENV_KERNEL, path)
        out = _losses_and_grads(algo, generic=False)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, **TOL)


def test_choice_is_probed_once_cached_per_machine_and_reused():
    calls = []

    def make():
        calls.append(1)
        return {"slow": lambda: time.sleep(0.003), "fast": lambda: None}

    assert kernels.choose("toy", ("slow", "fast"), make) == "fast"
    assert kernels.choose("toy", ("slow", "fast"), make) == "fast"
    assert len(calls) == 1
    data = json.loads(kernels.cache_path().read_text())
    (machine,) = data
    assert kernels.cpu_model() in machine and torch.__version__ in machine
    assert f"({kernels.cpu_capability()})" in machine  # a model name hides whether AVX-512 is there
    assert kernels.machine_record()["kernels"]["toy"] == "fast"
    assert f"{torch.get_num_threads()} threads" in machine
    entry = data[machine]["toy"]
    assert entry["choice"] == "fast" and set(entry["ms"]) == {"slow", "fast"}
    kernels._choices.clear()  # a new process: the file answers, no probe
    assert kernels.choose("toy", ("slow", "fast"), lambda: pytest.fail("probed again")) == "fast"


def test_environment_forces_a_path_and_rejects_unknown_ones(monkeypatch):
    critic = EnsembleCritic(39, 4, (256, 256))
    monkeypatch.setenv(kernels.ENV_KERNEL, "bmm")
    assert kernels.critic_kernel(critic, 8192, True) == "bmm"
    assert kernels.linear_kernel(256, 256, 512) == "aten"
    monkeypatch.setenv(kernels.ENV_KERNEL, "aten")
    assert kernels.critic_kernel(critic, 8192, True) == "mm"
    monkeypatch.setenv(kernels.ENV_KERNEL, "fastest-please")
    with pytest.raises(ValueError, match="ROBOPRETRAIN_KERNEL"):
        kernels.critic_kernel(critic, 8192, True)
    assert not kernels.cache_path().exists()  # forced paths never probe


def test_small_passes_are_not_probed():
    critic = EnsembleCritic(3, 2, (8, 8))
    assert kernels.critic_kernel(critic, 16, True) == "mm"
    assert kernels.linear_kernel(4, 8, 16) == "aten"
    assert not kernels.cache_path().exists()


def test_probe_leaves_the_global_random_stream_alone():
    critic = EnsembleCritic(10, 2, (64, 64))
    obs, acts = torch.zeros(512, 10), torch.zeros(512, 8, 2)  # 4096 rows: large enough to be probed
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    critic(obs, acts).sum().backward()
    assert kernels.choices_made(), "the pass should have been probed"
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
