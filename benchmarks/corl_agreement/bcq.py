"""Check BCQ against the authors' continuous_BCQ/BCQ.py (sfujim/BCQ) on the same weights and batch, float64.

    git -C <sfujim/BCQ clone> show HEAD:continuous_BCQ/BCQ.py > /tmp/bcq_authors.py
    python benchmarks/corl_agreement/bcq.py

The authors' classes run on our weights; their optimisers are replaced by recorders (no step), the losses are read at
each ``backward`` call; the random draws come in the same order (VAE encoder noise, VAE samples at s', at s).
"""
import sys

import torch
import torch.nn as nn

sys.path.insert(0, ".")
from robopretrain.algos import make_agent  # noqa: E402

torch.set_default_dtype(torch.float64)
S, A, B = 17, 4, 64
ns: dict = {}
exec(open("/tmp/bcq_authors.py").read(), ns)


class Recorder(torch.optim.Optimizer):
    def __init__(self, params):
        super().__init__(params, {})
        self.recorded = None

    def step(self, closure=None):
        self.recorded = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]


def lin(seq):
    return [m for m in seq if isinstance(m, nn.Linear)]


def main() -> None:
    torch.manual_seed(0)
    ours = make_agent("bcq", S, A, {})
    for m in (ours.actor, ours.target_actor, ours.critic, ours.target_critic, ours.vae):
        m.double()
    with torch.no_grad():
        for p in list(ours.target_actor.parameters()) + list(ours.target_critic.parameters()):
            p.add_(0.05 * torch.randn_like(p))
        for p in ours.critic.head.parameters():
            p.mul_(30.0)
    theirs = ns["BCQ"](S, A, 1.0, "cpu", discount=0.99, tau=0.005, lmbda=0.75, phi=0.05)

    def put(dst, w, b):
        dst.weight.data.copy_(w)
        dst.bias.data.copy_(b)

    for mine, tgt in ((ours.actor, theirs.actor), (ours.target_actor, theirs.actor_target)):
        for a, name in zip(lin(mine.net), ("l1", "l2", "l3")):
            put(getattr(tgt, name), a.weight, a.bias)
    for mine, tgt in ((ours.critic, theirs.critic), (ours.target_critic, theirs.critic_target)):
        layers = list(mine.hidden) + [mine.head]
        for e, names in enumerate((("l1", "l2", "l3"), ("l4", "l5", "l6"))):
            for lay, name in zip(layers, names):
                put(getattr(tgt, name), lay.weight[e].T, lay.bias[e, 0])
    enc, dec = lin(ours.vae.encoder), lin(ours.vae.decoder)
    put(theirs.vae.e1, enc[0].weight, enc[0].bias)
    put(theirs.vae.e2, enc[1].weight, enc[1].bias)
    L = 2 * A
    put(theirs.vae.mean, enc[2].weight[:L], enc[2].bias[:L])
    put(theirs.vae.log_std, enc[2].weight[L:], enc[2].bias[L:])
    for a, name in zip(dec, ("d1", "d2", "d3")):
        put(getattr(theirs.vae, name), a.weight, a.bias)
    theirs.actor_optimizer = Recorder(theirs.actor.parameters())
    theirs.critic_optimizer = Recorder(theirs.critic.parameters())
    theirs.vae_optimizer = Recorder(theirs.vae.parameters())

    g = torch.Generator().manual_seed(1)
    b = {"observations": torch.randn(B, S, generator=g), "actions": torch.rand(B, A, generator=g) * 2 - 1,
         "rewards": torch.randn(B, generator=g) * 3, "next_observations": torch.randn(B, S, generator=g),
         "dones": (torch.rand(B, generator=g) < 0.2).double()}

    class Buffer:
        def sample(self, n):
            return b["observations"], b["actions"], b["next_observations"], b["rewards"][:, None], 1 - b["dones"][:, None]

    seen = []
    real_backward = torch.Tensor.backward

    def spy(self, *a, **k):
        seen.append(self.item())
        return real_backward(self, *a, **k)

    torch.manual_seed(5)
    torch.Tensor.backward = spy
    try:
        theirs.train(Buffer(), 1, batch_size=B)
    finally:
        torch.Tensor.backward = real_backward
    torch.manual_seed(5)
    losses, _ = ours.compute_losses(b, with_metrics=False)
    sum(losses.values()).backward()
    d_loss = max(abs(losses[k].item() - v) for k, v in zip(("vae", "critic", "actor"), seen))
    d_actor = max((a.grad - c).abs().max().item() for a, c in
                  zip([p for lay in lin(ours.actor.net) for p in (lay.weight, lay.bias)], theirs.actor_optimizer.recorded))
    layers = list(ours.critic.hidden) + [ours.critic.head]
    rec = theirs.critic_optimizer.recorded  # l1 w, l1 b, ..., l6 w, l6 b
    d_critic = 0.0
    for e in range(2):
        for i, lay in enumerate(layers):
            w, bb = rec[2 * (3 * e + i)], rec[2 * (3 * e + i) + 1]
            d_critic = max(d_critic, (lay.weight.grad[e].T - w).abs().max().item(),
                           (lay.bias.grad[e, 0] - bb).abs().max().item())
    vr = dict(zip([n for n, _ in theirs.vae.named_parameters()], theirs.vae_optimizer.recorded))
    d_vae = max((enc[0].weight.grad - vr["e1.weight"]).abs().max().item(),
                (enc[2].weight.grad[:L] - vr["mean.weight"]).abs().max().item(),
                (enc[2].weight.grad[L:] - vr["log_std.weight"]).abs().max().item(),
                (dec[2].weight.grad - vr["d3.weight"]).abs().max().item())
    print(f"bcq: losses (vae, critic, actor) {[round(v, 4) for v in seen]}, max diff {d_loss:.2e}; gradient diff "
          f"vae {d_vae:.2e}, critic {d_critic:.2e}, actor {d_actor:.2e}")


if __name__ == "__main__":
    main()
