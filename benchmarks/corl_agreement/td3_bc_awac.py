"""Check TD3+BC and AWAC against CORL's single-file code (fetched at 6afec90) on the same weights and batch, float64.

Run from the repository root: python benchmarks/corl_agreement/td3_bc_awac.py (see README.md there)
CORL's classes are taken from its files by ``ast`` (their module imports d4rl / wandb, not installed) and given our
weights; optimisers are replaced by recorders (lr 0), so CORL's actor loss sees the same critic as ours.
"""
import ast
import copy
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, ".")
from robopretrain.algos import make_agent  # noqa: E402

torch.set_default_dtype(torch.float64)
S, A, B = 17, 4, 64


def corl_namespace(path, names):
    src = open(path).read()
    tree = ast.parse(src)
    keep = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in names]
    ns = {"torch": torch, "nn": nn, "F": F, "copy": copy, "deepcopy": copy.deepcopy, "np": np,
          "Dict": dict, "Any": object, "List": list, "Tuple": tuple, "TensorBatch": list}
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), ns)
    return ns


class Recorder(torch.optim.Optimizer):
    """zero_grad / step interface; step records the gradients and changes nothing."""

    def __init__(self, params):
        super().__init__(params, {})
        self.recorded = None

    def step(self, closure=None):
        self.recorded = [None if p.grad is None else p.grad.detach().clone()
                         for g in self.param_groups for p in g["params"]]


def linear_layers(seq):
    return [m for m in seq if isinstance(m, nn.Linear)]


def copy_mlp(ours, theirs):
    for a, b in zip(linear_layers(ours), linear_layers(theirs), strict=True):
        b.weight.data.copy_(a.weight.data)
        b.bias.data.copy_(a.bias.data)


def copy_critic_member(ours, e, theirs):
    layers = list(ours.hidden) + [ours.head]
    for lay, b in zip(layers, linear_layers(theirs), strict=True):
        b.weight.data.copy_(lay.weight.data[e].T)
        b.bias.data.copy_(lay.bias.data[e, 0])


def critic_grads(ours):
    layers = list(ours.hidden) + [ours.head]
    return [(lay.weight.grad, lay.bias.grad) for lay in layers]


def compare_critic_grads(ours, e, rec):
    diffs = []
    for (gw, gb), (cw, cb) in zip(critic_grads(ours), zip(rec[0::2], rec[1::2])):
        diffs += [(gw[e].T - cw).abs().max().item(), (gb[e, 0] - cb).abs().max().item()]
    return max(diffs)


def batch():
    g = torch.Generator().manual_seed(1)
    return {"observations": torch.randn(B, S, generator=g), "actions": torch.rand(B, A, generator=g) * 2 - 1,
            "rewards": torch.randn(B, generator=g), "next_observations": torch.randn(B, S, generator=g),
            "dones": (torch.rand(B, generator=g) < 0.2).double(), "next_actions": torch.rand(B, A, generator=g) * 2 - 1}


def check_td3_bc():
    ns = corl_namespace("/tmp/corl/algorithms_offline_td3_bc.py", {"Actor", "Critic", "TD3_BC", "soft_update"})
    torch.manual_seed(0)
    ours = make_agent("td3_bc", S, A, {})
    ours.actor.double(); ours.target_actor.double(); ours.critic.double(); ours.target_critic.double()
    # targets differ from the online nets, so a mis-wired target would show
    with torch.no_grad():
        for p in list(ours.target_actor.parameters()) + list(ours.target_critic.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    actor, c1, c2 = ns["Actor"](S, A, 1.0), ns["Critic"](S, A), ns["Critic"](S, A)
    copy_mlp(ours.actor.net, actor.net)
    copy_critic_member(ours.critic, 0, c1.net)
    copy_critic_member(ours.critic, 1, c2.net)
    ro, r1, r2 = Recorder(actor.parameters()), Recorder(c1.parameters()), Recorder(c2.parameters())
    tr = ns["TD3_BC"](max_action=1.0, actor=actor, actor_optimizer=ro, critic_1=c1, critic_1_optimizer=r1,
                      critic_2=c2, critic_2_optimizer=r2, discount=0.99, tau=0.005, policy_noise=0.2, noise_clip=0.5,
                      policy_freq=2, alpha=2.5)
    copy_mlp(ours.target_actor.net, tr.actor_target.net)
    copy_critic_member(ours.target_critic, 0, tr.critic_1_target.net)
    copy_critic_member(ours.target_critic, 1, tr.critic_2_target.net)
    tr.total_it = 1  # the coming update is an actor update, as ours with num_updates = 1
    ours.num_updates = 1
    b = batch()
    torch.manual_seed(5)
    log = tr.train([b["observations"], b["actions"], b["rewards"][:, None], b["next_observations"], b["dones"][:, None]])
    torch.manual_seed(5)
    losses, _ = ours.compute_losses(b, with_metrics=False)
    sum(losses.values()).backward()
    d_closs = abs(losses["critic"].item() - log["critic_loss"])
    d_aloss = abs(losses["actor"].item() - log["actor_loss"])
    d_cgrad = max(compare_critic_grads(ours.critic, 0, r1.recorded), compare_critic_grads(ours.critic, 1, r2.recorded))
    ours_actor = [p.grad for lay in linear_layers(ours.actor.net) for p in (lay.weight, lay.bias)]
    d_agrad = max((a - c).abs().max().item() for a, c in zip(ours_actor, ro.recorded))
    print(f"td3_bc: |critic loss| {log['critic_loss']:.4f} diff {d_closs:.2e}; |actor loss| {log['actor_loss']:.4f} "
          f"diff {d_aloss:.2e}; critic grad diff {d_cgrad:.2e}; actor grad diff {d_agrad:.2e}")


def check_awac():
    ns = corl_namespace("/tmp/corl/algorithms_offline_awac.py",
                        {"Actor", "Critic", "AdvantageWeightedActorCritic", "soft_update"})
    torch.manual_seed(0)
    ours = make_agent("awac", S, A, {"awac_lambda": 0.0001})  # small: some weights clip at 100
    ours.actor.double(); ours.critic.double(); ours.target_critic.double()
    with torch.no_grad():
        ours.actor.log_std.copy_(0.3 * torch.randn(A))
        for p in ours.target_critic.parameters():
            p.add_(0.05 * torch.randn_like(p))
    actor, c1, c2 = ns["Actor"](S, A, 256), ns["Critic"](S, A, 256), ns["Critic"](S, A, 256)
    copy_mlp(ours.actor.net, actor._mlp)
    actor._mlp = nn.Sequential(*actor._mlp, nn.Tanh())  # our policy's mean is tanh-bounded: CORL's Actor, our mean
    actor.double()  # CORL creates _log_std as float32 explicitly
    actor._log_std.data.copy_(ours.actor.log_std.data)
    copy_critic_member(ours.critic, 0, c1._mlp)
    copy_critic_member(ours.critic, 1, c2._mlp)
    ro, r1, r2 = Recorder(actor.parameters()), Recorder(c1.parameters()), Recorder(c2.parameters())
    tr = ns["AdvantageWeightedActorCritic"](actor=actor, actor_optimizer=ro, critic_1=c1, critic_1_optimizer=r1,
                                            critic_2=c2, critic_2_optimizer=r2, gamma=0.99, tau=0.005,
                                            awac_lambda=0.0001, exp_adv_max=100.0)
    copy_critic_member(ours.target_critic, 0, tr._target_critic_1._mlp)
    copy_critic_member(ours.target_critic, 1, tr._target_critic_2._mlp)
    b = batch()
    b["rewards"] = b["rewards"] * 3  # a spread of advantages, some weights clipped at 100
    torch.manual_seed(5)
    log = tr.update([b["observations"], b["actions"], b["rewards"][:, None], b["next_observations"], b["dones"][:, None]])
    torch.manual_seed(5)
    losses, m = ours.compute_losses(b)
    sum(losses.values()).backward()
    d_closs = abs(losses["critic"].item() - log["critic_loss"])
    d_aloss = abs(losses["actor"].item() - log["actor_loss"])
    d_cgrad = max(compare_critic_grads(ours.critic, 0, r1.recorded), compare_critic_grads(ours.critic, 1, r2.recorded))
    ours_actor = [p.grad for lay in linear_layers(ours.actor.net) for p in (lay.weight, lay.bias)] + [ours.actor.log_std.grad]
    # CORL's Actor registers _log_std first, then the _mlp layers
    order = [n for n, _ in actor.named_parameters()]
    rec = dict(zip(order, ro.recorded))
    theirs = [rec[f"_mlp.{i}.{w}"] for i in (0, 2, 4, 6) for w in ("weight", "bias")] + [rec["_log_std"]]
    d_agrad = max((a - c).abs().max().item() for a, c in zip(ours_actor, theirs))
    print(f"awac: |critic loss| {log['critic_loss']:.4f} diff {d_closs:.2e}; |actor loss| {log['actor_loss']:.4f} "
          f"diff {d_aloss:.2e}; critic grad diff {d_cgrad:.2e}; actor grad diff {d_agrad:.2e}; "
          f"weights clipped {m['weight_clipped'].item():.2f}")


if __name__ == "__main__":
    check_td3_bc()
    check_awac()
