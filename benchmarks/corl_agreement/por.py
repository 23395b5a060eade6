"""Check POR against the authors' code (ryanxhr/POR, residual variant) on the same weights and batch, float64.

    mkdir -p /tmp/por_authors
    for f in por.py policy.py value_functions.py util.py; do
        git -C <ryanxhr/POR clone> show HEAD:$f > /tmp/por_authors/$f; done
    python benchmarks/corl_agreement/por.py

The authors' ``TwinV``, ``GaussianPolicy`` (guide; execute with our ``tanh`` appended to its mean network, the one
deliberate difference) and one ``POR.por_residual_update`` run on our weights (target twin perturbed); their optimisers
are replaced by recorders (no step, so their guide weights see the same value as ours), the losses are read at each
``backward`` call. Their modules import wandb / IPython / sklearn, which are stubbed when missing (none is used by the
update). No code of theirs is copied here. It runs twice: their code as it is, whose two float32 casts (the expectile
weight and ``1 - done``, which rounds the discount to float32) leave differences of ~1e-8 relative, and with those two
casts made float64 in memory, which leaves float64 rounding.
"""
import copy
import importlib.machinery
import importlib.util
import sys
import types

import torch
import torch.nn as nn

sys.path.insert(0, ".")
from robopretrain.algos import make_agent  # noqa: E402
from robopretrain.algos.base import soft_update_  # noqa: E402

AUTHORS = "/tmp/por_authors"
S, A, B = 17, 4, 64


def _stub_missing(*names: str) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.embed = lambda *a, **k: None  # IPython.embed
            mod.log = lambda *a, **k: None  # wandb.log
            mod.datasets = types.ModuleType(name + ".datasets")
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
            mod.datasets.__spec__ = importlib.machinery.ModuleSpec(name + ".datasets", None)
            sys.modules[name] = mod
            sys.modules[name + ".datasets"] = mod.datasets


def _load(name: str, float64_casts: bool = False):
    """One of the authors' files as a module; ``float64_casts`` replaces its two float32 casts (``(u < 0).float()``
    in the expectile weight, ``terminals.float()`` before the discount) by the batch's dtype, in memory."""
    source = open(f"{AUTHORS}/{name}.py").read()
    if float64_casts:
        for old, new in (("(u < 0).float()", "(u < 0).to(u.dtype)"),
                         ("terminals.float()", "terminals.to(rewards.dtype)")):
            assert old in source, old
            source = source.replace(old, new)
    module = types.ModuleType(f"authors_{name}")
    module.__file__ = f"{AUTHORS}/{name}.py"
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


class Recorder(torch.optim.Optimizer):
    def __init__(self, params):
        super().__init__(params, {"lr": 1e-4})
        self.recorded = None

    def step(self, closure=None):
        self.recorded = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]


def lin(seq):
    return [m for m in seq if isinstance(m, nn.Linear)]


def copy_linears(src, dst) -> None:
    for a, b in zip(lin(src), lin(dst), strict=True):
        b.weight.data.copy_(a.weight)
        b.bias.data.copy_(a.bias)


def main(float64_casts: bool) -> None:
    _stub_missing("wandb", "IPython", "sklearn")
    sys.path.insert(0, AUTHORS)  # their modules import util by name
    util = _load("util")
    util.DEFAULT_DEVICE = torch.device("cpu")
    sys.modules["util"] = util
    policy_mod, value_mod, por_mod = _load("policy"), _load("value_functions"), _load("por", float64_casts)
    por_mod.DEFAULT_DEVICE = torch.device("cpu")
    torch.set_default_dtype(torch.float64)

    torch.manual_seed(0)
    cfg = {"alpha": 1.0, "expectile": 0.9, "discount": 0.99, "tau": 0.005}
    ours = make_agent("por", S, A, cfg)
    for m in (ours.value, ours.target_value, ours.guide, ours.actor):
        m.double()
    with torch.no_grad():
        for p in ours.target_value.parameters():
            p.add_(0.05 * torch.randn_like(p))
        ours.guide.log_std.copy_(0.3 * torch.randn(S))
        ours.actor.log_std.copy_(0.3 * torch.randn(A))

    vf = value_mod.TwinV(S, hidden_dim=256, n_hidden=2)
    goal = policy_mod.GaussianPolicy(S, S, hidden_dim=256, n_hidden=2)
    execute = policy_mod.GaussianPolicy(2 * S, A, hidden_dim=1024, n_hidden=2)
    execute.net = nn.Sequential(*execute.net, nn.Tanh())  # our tanh-bounded mean
    theirs = por_mod.POR(vf, execute, goal, max_steps=10, tau=cfg["expectile"], alpha=cfg["alpha"],
                         discount=cfg["discount"], beta=cfg["tau"])
    for m in (theirs.vf, theirs.v_target, theirs.policy, theirs.goal_policy):
        m.double()
    for e, name in enumerate(("v1", "v2")):
        copy_linears(ours.value.nets[e], getattr(theirs.vf, name))
        copy_linears(ours.target_value.nets[e], getattr(theirs.v_target, name))
    copy_linears(ours.guide.net, theirs.goal_policy.net)
    copy_linears(ours.actor.net, theirs.policy.net)
    with torch.no_grad():
        theirs.goal_policy.log_std.copy_(ours.guide.log_std)
        theirs.policy.log_std.copy_(ours.actor.log_std)
    theirs.v_optimizer = Recorder(theirs.vf.parameters())
    theirs.goal_policy_optimizer = Recorder(theirs.goal_policy.parameters())
    theirs.policy_optimizer = Recorder(theirs.policy.parameters())

    g = torch.Generator().manual_seed(1)
    b = {"observations": torch.randn(B, S, generator=g), "actions": torch.rand(B, A, generator=g) * 2 - 1,
         "rewards": torch.randn(B, generator=g) * 3, "next_observations": torch.randn(B, S, generator=g),
         "dones": (torch.rand(B, generator=g) < 0.2).double()}

    seen = []
    real_backward = torch.Tensor.backward

    def spy(self, *a, **k):
        seen.append(self.item())
        return real_backward(self, *a, **k)

    v_target_before = copy.deepcopy(theirs.v_target)
    torch.Tensor.backward = spy
    try:
        theirs.por_residual_update(b["observations"], b["actions"], b["next_observations"], b["rewards"], b["dones"])
    finally:
        torch.Tensor.backward = real_backward
    losses, metrics = ours.compute_losses(b, with_metrics=True)
    sum(losses.values()).backward()
    d_losses = [abs(losses[k].item() - v) for k, v in zip(("value", "guide", "actor"), seen)]

    def grads(module):
        return [p.grad for lay in lin(module) for p in (lay.weight, lay.bias)]

    rec_v = theirs.v_optimizer.recorded  # v1 (w, b) x 3, then v2
    d_value = max((a - c).abs().max().item() for a, c in
                  zip(grads(ours.value.nets[0]) + grads(ours.value.nets[1]), rec_v))
    rec_g = dict(zip([n for n, _ in theirs.goal_policy.named_parameters()], theirs.goal_policy_optimizer.recorded))
    d_guide = max((ours.guide.log_std.grad - rec_g["log_std"]).abs().max().item(),
                  *[(a - c).abs().max().item() for a, c in
                    zip(grads(ours.guide.net), [v for n, v in rec_g.items() if n != "log_std"])])
    rec_p = dict(zip([n for n, _ in theirs.policy.named_parameters()], theirs.policy_optimizer.recorded))
    d_actor = max((ours.actor.log_std.grad - rec_p["log_std"]).abs().max().item(),
                  *[(a - c).abs().max().item() for a, c in
                    zip(grads(ours.actor.net), [v for n, v in rec_p.items() if n != "log_std"])])
    # the target update: ours on the (unstepped) value against theirs after the update
    soft_update_(ours.target_value, ours.value, cfg["tau"])
    d_target = max((p - q).abs().max().item() for p, q in
                   zip([p for n in ours.target_value.nets for p in n.parameters()], theirs.v_target.parameters()))
    moved = max((p - q).abs().max().item() for p, q in zip(theirs.v_target.parameters(), v_target_before.parameters()))
    which = "their float32 casts as float64" if float64_casts else "their code as is"
    print(f"por ({which}): losses (value, guide, execute) {[round(v, 4) for v in seen]}, diffs "
          f"{' '.join(f'{d:.1e}' for d in d_losses)}; clipped weights "
          f"{metrics['weight_clipped'].item():.2f}; gradient diff value {d_value:.2e}, guide {d_guide:.2e}, execute "
          f"{d_actor:.2e}; target value {d_target:.2e} (it moved by {moved:.2e})")


if __name__ == "__main__":
    main(float64_casts=False)
    main(float64_casts=True)
