"""ReBRAC vs CORL's JAX rebrac.py. Mode 'export': our weights + batch -> /tmp/rebrac_ours.npz; mode 'compare': load
CORL's losses/grads/noise (/tmp/rebrac_corl.npz, from /tmp/rebrac_check_jax.py) and compare with ours (float64)."""
import sys
import numpy as np
import torch
sys.path.insert(0, ".")
from robopretrain.algos import make_agent
torch.set_default_dtype(torch.float64)
S, A, B = 17, 4, 64

def agent():
    torch.manual_seed(0)
    ag = make_agent("rebrac", S, A, {"actor_bc_coef": 0.7, "critic_bc_coef": 0.3})
    for m in (ag.actor, ag.target_actor, ag.critic, ag.target_critic):
        m.double()
    with torch.no_grad():
        for p in list(ag.target_actor.parameters()) + list(ag.target_critic.parameters()):
            p.add_(0.05 * torch.randn_like(p))
        for n in list(ag.critic.norms) + list(ag.target_critic.norms):  # non-trivial LayerNorm affines
            n.weight.add_(0.1 * torch.randn_like(n.weight)); n.bias.add_(0.1 * torch.randn_like(n.bias))
        for p in ag.critic.head.parameters():
            p.mul_(100.0)  # Q-values of order 1
    return ag

def batch():
    g = torch.Generator().manual_seed(1)
    return {"observations": torch.randn(B, S, generator=g), "actions": torch.rand(B, A, generator=g) * 2 - 1,
            "rewards": torch.randn(B, generator=g), "next_observations": torch.randn(B, S, generator=g),
            "dones": (torch.rand(B, generator=g) < 0.2).double(), "next_actions": torch.rand(B, A, generator=g) * 2 - 1}

def actor_arrays(prefix, actor):
    lins = [m for m in actor.net if isinstance(m, torch.nn.Linear)]
    return {f"{prefix}_{i}_{k}": (l.weight.T if k == "kernel" else l.bias).detach().numpy()
            for i, l in enumerate(lins) for k in ("kernel", "bias")}

def critic_arrays(prefix, critic):
    out = {}
    for i, l in enumerate(list(critic.hidden) + [critic.head]):
        out[f"{prefix}_dense{i}_kernel"] = l.weight.detach().numpy()
        out[f"{prefix}_dense{i}_bias"] = l.bias.detach()[:, 0].numpy()
    for i, n in enumerate(critic.norms):
        out[f"{prefix}_ln{i}_scale"] = n.weight.detach()[:, 0].numpy()
        out[f"{prefix}_ln{i}_bias"] = n.bias.detach()[:, 0].numpy()
    return out

if sys.argv[1] == "export":
    ag, b = agent(), batch()
    arrays = {**actor_arrays("actor", ag.actor), **actor_arrays("tactor", ag.target_actor),
              **critic_arrays("critic", ag.critic), **critic_arrays("tcritic", ag.target_critic),
              **{f"batch_{k}": v.numpy() for k, v in b.items()}}
    np.savez("/tmp/rebrac_ours.npz", **arrays)
else:
    corl = np.load("/tmp/rebrac_corl.npz")
    ag, b = agent(), batch()
    ag.num_updates = 1  # an actor update
    noise = torch.from_numpy(corl["noise"])
    real = torch.randn_like
    torch.randn_like = lambda x, **kw: noise.clone()
    try:
        losses, _ = ag.compute_losses(b, with_metrics=False)
    finally:
        torch.randn_like = real
    sum(losses.values()).backward()
    print(f"rebrac: critic loss {losses['critic'].item():.4f} diff {abs(losses['critic'].item() - float(corl['critic_loss'])):.2e}; "
          f"actor loss {losses['actor'].item():.4f} diff {abs(losses['actor'].item() - float(corl['actor_loss'])):.2e}")
    d = []
    for i, l in enumerate(list(ag.critic.hidden) + [ag.critic.head]):
        d += [np.abs(l.weight.grad.numpy() - corl[f"g_critic_dense{i}_kernel"]).max(),
              np.abs(l.bias.grad.numpy()[:, 0] - corl[f"g_critic_dense{i}_bias"]).max()]
    for i, n in enumerate(ag.critic.norms):
        d += [np.abs(n.weight.grad.numpy()[:, 0] - corl[f"g_critic_ln{i}_scale"]).max(),
              np.abs(n.bias.grad.numpy()[:, 0] - corl[f"g_critic_ln{i}_bias"]).max()]
    da = []
    for i, l in enumerate([m for m in ag.actor.net if isinstance(m, torch.nn.Linear)]):
        da += [np.abs(l.weight.grad.numpy().T - corl[f"g_actor_{i}_kernel"]).max(),
               np.abs(l.bias.grad.numpy() - corl[f"g_actor_{i}_bias"]).max()]
    print(f"rebrac: critic grad diff {max(d):.2e} (max |grad| {max(np.abs(corl[k]).max() for k in corl.files if k.startswith('g_critic')):.2e}); "
          f"actor grad diff {max(da):.2e}")
