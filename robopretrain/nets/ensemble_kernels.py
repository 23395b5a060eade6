"""CPU kernel paths of the ReLU ensemble MLP behind :class:`robopretrain.nets.critic.EnsembleCritic`.

Each path computes the same function and gradients as the critic's generic autograd path (a ReLU MLP per
ensemble member on ``[s, a]`` rows, the state half of the first layer computed once per state where the path
allows it); they differ only in how the products are issued and where activations live:

* ``"mm"`` (:class:`ChunkedReluEnsembleMLP`): per member, the rows are processed in chunks of about
  ``CHUNK_ROWS`` rows (whole states), each product a 2-D GEMM (``torch.mm``/``addmm`` into preallocated
  buffers, transposes passed as flags, gradients accumulated with ``addmm_``). Bias, ReLU, ReLU masks and bias
  gradients run on a chunk while it is still in the core's cache, instead of as whole-array passes over
  8-16 MB arrays that go to memory. Activations are kept between forward and backward in reused buffers.
* ``"bmm"`` (:class:`ReluEnsembleMLP`): one batched GEMM over the members per product, whole arrays, reused
  buffers.
* ``"onednn"`` (:class:`DnnReluEnsembleMLP`): per member, oneDNN inner products on ``[s, a]`` rows with
  bias and ReLU fused into the forward products; fresh activations per pass.

Which one is fastest depends on the CPU and the thread count (oneDNN won 2x on an AMD EPYC, where MKL's
sgemm skips AVX-512, and lost on an Intel Xeon): :mod:`robopretrain.nets.kernels` measures them at first use.
Buffers are tagged with a generation counter, so a backward whose activations were overwritten by a later
forward of the same size raises instead of returning wrong gradients.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from robopretrain.nets.mlp import dense

CHUNK_ROWS = 1024  # rows per chunk of the "mm" path: a chunk's 256-wide activations (1 MB) stay in L2


def is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


class Workspace:
    """Named buffers reused between calls, and generation counters for the activations they hold.

    Buffers are keyed by name and shape, so passes with different numbers of rows never share them;
    ``generations[rows]`` counts the differentiable forward passes that wrote the activations of that size.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self.generations: dict[int, int] = {}

    def bump(self, rows: int) -> int:
        self.generations[rows] = self.generations.get(rows, 0) + 1
        return self.generations[rows]

    def keep(self, ctx, acts: list[torch.Tensor], q: torch.Tensor, want_features: bool, *saved: torch.Tensor):
        """Tag a differentiable pass whose activations ``acts`` stay here until its backward; its outputs."""
        ctx.rows, ctx.ws = acts[0].shape[1], self
        ctx.generation = self.bump(ctx.rows)
        ctx.save_for_backward(*saved)
        return (q, acts[-1].clone()) if want_features else q

    def restore(self, ctx) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """``obs, actions, params, activations`` of the pass tagged by :meth:`keep`, for its backward.

        Raises if a later forward pass of the same size overwrote the activations.
        """
        if self.generations.get(ctx.rows) != ctx.generation:
            raise RuntimeError(
                "EnsembleCritic fast path: another forward pass reused the activation buffers before this "
                "backward; call backward before the next forward, or build the critic with fast_path=False"
            )
        obs, actions, *params = ctx.saved_tensors
        num, m = params[0].shape[0], ctx.rows
        acts = [self.get(f"grad_h{i}", (num, m, w.shape[-1]), obs) for i, w in enumerate(params[0:-2:2])]
        return obs, actions, params, acts

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        key = (name, shape)
        buf = self.buffers.get(key)
        if buf is None or buf.dtype != like.dtype or buf.device != like.device:
            if len(self.buffers) >= 32:  # many different batch shapes: start afresh rather than grow
                self.buffers.clear()
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
            self.buffers[key] = buf
        return buf


def relu_mlp_forward(
    obs: torch.Tensor, actions: torch.Tensor, params: Sequence[torch.Tensor], ws: Workspace, prefix: str
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Ensemble ReLU MLP on ``[s, a]`` writing activations into ``ws``; returns (activations, q (E, M, 1))."""
    weights, biases = params[0::2], params[1::2]
    obs_dim = obs.shape[-1]
    num, (batch, n, act_dim) = weights[0].shape[0], actions.shape
    m = batch * n
    h = ws.get(f"{prefix}h0", (num, m, weights[0].shape[-1]), obs)
    torch.bmm(actions.reshape(1, m, act_dim).expand(num, m, act_dim), weights[0][:, obs_dim:], out=h)
    state_part = torch.baddbmm(biases[0], obs.unsqueeze(0).expand(num, batch, obs_dim), weights[0][:, :obs_dim])
    h.view(num, batch, n, -1).add_(state_part.unsqueeze(2)).relu_()
    acts = [h]
    for i, (w, b) in enumerate(zip(weights[1:-1], biases[1:-1]), start=1):
        h = torch.baddbmm(b, h, w, out=ws.get(f"{prefix}h{i}", (num, m, w.shape[-1]), obs)).relu_()
        acts.append(h)
    return acts, _head_forward(h, weights[-1], biases[-1])


def _head_forward(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``h (E, M, H) @ weight (E, H, 1) + bias`` as one matrix-vector product per member.

    A batched GEMM with a single output column is ~10x slower than GEMV on CPU, so the output layer
    (and only it) runs member by member; the hidden layers stay batched.
    """
    q = torch.stack([torch.mv(h[e], weight[e, :, 0]) for e in range(h.shape[0])])
    return q.unsqueeze(-1).add_(bias)



def state_action_input(obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``[s, a]`` rows ``(B * n, S + A)`` for ``obs (B, S)`` and ``actions (B, n, A)``."""
    batch, n, act_dim = actions.shape
    x = torch.cat([obs.unsqueeze(1).expand(batch, n, obs.shape[-1]), actions], dim=-1)
    return x.view(batch * n, -1)


def dnn_member_forward(
    x: torch.Tensor, params: Sequence[torch.Tensor], e: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Member ``e`` of the ReLU ensemble MLP on rows ``x (M, in)`` with oneDNN; (activations, q (M,))."""
    weights, biases = params[0::2], params[1::2]
    h, acts = x, []
    for w, b in zip(weights[:-1], biases[:-1]):
        h = dense(h, w[e].t().contiguous(), b[e, 0], relu=True)  # bias and ReLU fused into the product
        acts.append(h)
    return acts, torch.addmv(biases[-1][e, 0], h, weights[-1][e, :, 0])


class DnnReluEnsembleMLP(torch.autograd.Function):
    """Forward/backward of the ReLU ensemble MLP with oneDNN products, member by member (CPU fp32).

    Every product runs on oneDNN (the weight gradients ``inp^T @ g`` with transposed views, which oneDNN
    packs itself: still ~1.4x faster than BLAS here). Every pass allocates its own activations, so graphs
    never share buffers (see :func:`robopretrain.nets.mlp.retain_freed_memory` for the page-fault cost).
    """

    @staticmethod
    def forward(ctx, obs, actions, want_features, *params):  # type: ignore[override]
        x = state_action_input(obs, actions)
        per_member = [dnn_member_forward(x, params, e) for e in range(params[0].shape[0])]
        acts = [a for a, _ in per_member]
        q = torch.stack([q for _, q in per_member]).unsqueeze(-1)
        ctx.save_for_backward(obs, actions, x, *[h for a in acts for h in a], *params)
        ctx.num_members, ctx.depth = len(acts), len(acts[0])
        if want_features:
            return q, torch.stack([a[-1] for a in acts])
        return q

    @staticmethod
    def backward(ctx, grad_q, grad_features=None):  # type: ignore[override]
        num, depth = ctx.num_members, ctx.depth
        obs, actions, x, *rest = ctx.saved_tensors
        flat_acts, params = rest[: num * depth], rest[num * depth :]
        acts = [flat_acts[e * depth : (e + 1) * depth] for e in range(num)]
        weights = params[0::2]
        (batch, n), obs_dim = actions.shape[:2], obs.shape[-1]
        grad_q = grad_q.contiguous()
        grads: list[list[torch.Tensor]] = [[] for _ in params]
        grad_x = None
        for e in range(num):
            gq = grad_q[e, :, 0]
            if ctx.needs_input_grad[-2]:
                grads[-2].append(torch.mv(acts[e][-1].t(), gq).unsqueeze(-1))
                grads[-1].append(gq.sum().view(1, 1))
            g = torch.outer(gq, weights[-1][e, :, 0])
            if grad_features is not None:
                g.add_(grad_features[e])
            for i in range(depth - 1, -1, -1):
                torch.ops.aten.threshold_backward.grad_input(g, acts[e][i], 0, grad_input=g)  # ReLU mask, in place
                if ctx.needs_input_grad[3 + 2 * i]:
                    inp = acts[e][i - 1] if i > 0 else x
                    grads[2 * i].append(dense(inp.t(), g.t()))  # inp^T @ g, (in, out)
                    grads[2 * i + 1].append(g.sum(0, keepdim=True))
                if i > 0:
                    g = dense(g, weights[i][e])  # g @ W_i^T
                elif ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                    gx = dense(g, weights[0][e])
                    grad_x = gx if grad_x is None else grad_x.add_(gx)
        grad_obs = grad_actions = None
        if grad_x is not None:
            grad_x = grad_x.view(batch, n, -1)
            if ctx.needs_input_grad[0]:
                grad_obs = grad_x[..., :obs_dim].sum(1)
            if ctx.needs_input_grad[1]:
                grad_actions = grad_x[..., obs_dim:].contiguous()
        return (grad_obs, grad_actions, None, *[torch.stack(g) if g else None for g in grads])


class ReluEnsembleMLP(torch.autograd.Function):
    """Forward/backward of the ReLU ensemble MLP with reused activation and gradient buffers."""

    @staticmethod
    def forward(ctx, obs, actions, ws, want_features, *params):  # type: ignore[override]
        acts, q = relu_mlp_forward(obs, actions, params, ws, "grad_")
        return ws.keep(ctx, acts, q, want_features, obs, actions, *params)

    @staticmethod
    def backward(ctx, grad_q, grad_features=None):  # type: ignore[override]
        ws: Workspace = ctx.ws
        obs, actions, params, acts = ws.restore(ctx)
        weights = params[0::2]
        num, (batch, n, act_dim), obs_dim = weights[0].shape[0], actions.shape, obs.shape[-1]
        m = batch * n
        grads: list[torch.Tensor | None] = [None] * len(params)
        grad_q = grad_q.contiguous()
        grads[-2] = torch.stack([torch.mv(acts[-1][e].t(), grad_q[e, :, 0]) for e in range(num)]).unsqueeze(-1)
        grads[-1] = grad_q.sum(dim=1, keepdim=True)
        g = torch.mul(grad_q, weights[-1].transpose(1, 2), out=ws.get(f"g{len(acts) - 1}", acts[-1].shape, obs))
        if grad_features is not None:
            g.add_(grad_features)
        for i in range(len(acts) - 1, -1, -1):
            torch.ops.aten.threshold_backward.grad_input(g, acts[i], 0, grad_input=g)  # ReLU mask, in place
            if i == 0:
                break
            grads[2 * i] = torch.bmm(acts[i - 1].transpose(1, 2), g)
            grads[2 * i + 1] = g.sum(dim=1, keepdim=True)
            g = torch.bmm(g, weights[i].transpose(1, 2), out=ws.get(f"g{i - 1}", acts[i - 1].shape, obs))
        g_states = g if n == 1 else g.view(num, batch, n, -1).sum(dim=2)  # one action per state: no sum
        acts_e = actions.reshape(1, m, act_dim).expand(num, m, act_dim)
        grad_w_state = torch.bmm(obs.t().unsqueeze(0).expand(num, obs_dim, batch), g_states)
        grads[0] = torch.cat([grad_w_state, torch.bmm(acts_e.transpose(1, 2), g)], dim=1)
        grads[1] = g_states.sum(dim=1, keepdim=True)
        grad_obs = grad_actions = None
        if ctx.needs_input_grad[0]:
            grad_obs = torch.bmm(g_states, weights[0][:, :obs_dim].transpose(1, 2)).sum(0)
        if ctx.needs_input_grad[1]:
            grad_actions = torch.bmm(g, weights[0][:, obs_dim:].transpose(1, 2)).sum(0).view(batch, n, act_dim)
        return (grad_obs, grad_actions, None, None, *grads)




def _chunks(batch: int, n: int, chunk_rows: int) -> list[tuple[int, int, int, int]]:
    """``(s0, s1, r0, r1)``: whole states ``s0:s1`` and their rows ``r0:r1`` per chunk of about ``chunk_rows`` rows."""
    per = max(1, chunk_rows // max(n, 1))
    return [(s0, min(batch, s0 + per), s0 * n, min(batch, s0 + per) * n) for s0 in range(0, batch, per)]


# --------------------------------------------------------------------------- members on two threads ("mm_par")
#
# With two or more torch threads, the "mm_par" path runs the members of the ensemble concurrently, one per thread,
# each op single-threaded (torch's thread count is set to 1 for the duration of the pass), instead of splitting
# every op across threads. The threads then meet once per pass, not at every op's barrier, which matters when
# another process takes a core away for a while. Same arithmetic as "mm" (each member's work is identical, and
# the per-member contributions to the input gradients are summed in member order after both finish).

_pool: ThreadPoolExecutor | None = None
_pool_pid = -1


def _member_pool() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():  # a forked child does not inherit the worker thread
        previous = torch.get_num_threads()
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="robopretrain-members")
        _pool.submit(torch.set_num_threads, 1).result()  # the worker's own OpenMP/MKL settings: one thread
        torch.set_num_threads(previous)
        _pool_pid = os.getpid()
    return _pool


def set_member_thread_flush(on: bool) -> None:
    """Flush subnormal floats to zero (or not) on the member thread too, if it already runs (a thread started
    later copies its creator's setting): :mod:`robopretrain.cpu_settings`."""
    if _pool is not None and _pool_pid == os.getpid():
        _pool.submit(torch.set_flush_denormal, on).result()


def _members_without_grad(fn: Callable[[int], None], members: range) -> None:
    with torch.no_grad():  # grad mode is per thread; the kernels write into buffers and never record a graph
        for e in members:
            fn(e)


def for_each_member(fn: Callable[[int], None], num: int, parallel: bool) -> None:
    """``fn(e)`` for every member: in order, or (``parallel``) odd members on a second thread, one thread per op."""
    if not parallel or num < 2:
        for e in range(num):
            fn(e)
        return
    pool, previous = _member_pool(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        future = pool.submit(_members_without_grad, fn, range(1, num, 2))
        try:
            for e in range(0, num, 2):
                fn(e)
        finally:
            future.result()
    finally:
        torch.set_num_threads(previous)


def chunked_forward(
    obs: torch.Tensor,
    actions: torch.Tensor,
    params: Sequence[torch.Tensor],
    ws: Workspace,
    prefix: str,
    keep: bool,
    chunk_rows: int = CHUNK_ROWS,
    parallel: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The "mm" path's forward: q ``(E, M, 1)`` and, with ``keep``, every activation ``(E, M, H_i)`` in ``ws``.

    Without ``keep`` (no-grad passes) the activations live in one chunk-sized buffer per layer and member, and
    only q is returned (with an empty activation list). ``parallel``: the "mm_par" path.
    """
    weights, biases = params[0::2], params[1::2]
    num, (batch, n, act_dim), obs_dim = weights[0].shape[0], actions.shape, obs.shape[-1]
    m, depth = batch * n, len(weights) - 1
    a2d = actions.reshape(m, act_dim)
    chunks = _chunks(batch, n, chunk_rows)
    width = max(r1 - r0 for _, _, r0, r1 in chunks)
    if keep:
        acts = [ws.get(f"{prefix}h{i}", (num, m, w.shape[-1]), obs) for i, w in enumerate(weights[:-1])]
    else:
        scratch = [[ws.get(f"{prefix}c{e}_{i}", (width, w.shape[-1]), obs) for i, w in enumerate(weights[:-1])]
                   for e in range(num)]
    q = torch.empty(num, m, 1, dtype=obs.dtype, device=obs.device)

    def member(e: int) -> None:
        state_part = torch.addmm(biases[0][e], obs, weights[0][e, :obs_dim])  # once per state, (B, H0)
        w_act = weights[0][e, obs_dim:]
        for s0, s1, r0, r1 in chunks:
            h = acts[0][e, r0:r1] if keep else scratch[e][0][: r1 - r0]
            torch.mm(a2d[r0:r1], w_act, out=h)
            h.view(s1 - s0, n, -1).add_(state_part[s0:s1].unsqueeze(1)).relu_()
            for i in range(1, depth):
                out = acts[i][e, r0:r1] if keep else scratch[e][i][: r1 - r0]
                h = torch.addmm(biases[i][e], h, weights[i][e], out=out).relu_()
            torch.addmv(biases[-1][e, 0], h, weights[-1][e, :, 0], out=q[e, r0:r1, 0])

    for_each_member(member, num, parallel)
    return (acts if keep else []), q


class ChunkedReluEnsembleMLP(torch.autograd.Function):
    """Forward/backward of the ReLU ensemble MLP, member by member and chunk by chunk ("mm" and "mm_par")."""

    @staticmethod
    def forward(ctx, obs, actions, ws, want_features, chunk_rows, parallel, *params):  # type: ignore[override]
        acts, q = chunked_forward(obs, actions, params, ws, "grad_", True, chunk_rows, parallel)
        ctx.chunk_rows, ctx.parallel = chunk_rows, parallel
        return ws.keep(ctx, acts, q, want_features, obs, actions, *params)

    @staticmethod
    def backward(ctx, grad_q, grad_features=None):  # type: ignore[override]
        ws: Workspace = ctx.ws
        obs, actions, params, acts = ws.restore(ctx)
        weights = params[0::2]
        num, (batch, n, act_dim), obs_dim = weights[0].shape[0], actions.shape, obs.shape[-1]
        m, depth = batch * n, len(weights) - 1
        a2d = actions.reshape(m, act_dim)
        chunks = _chunks(batch, n, ctx.chunk_rows)
        width = max(r1 - r0 for _, _, r0, r1 in chunks)
        scratch = [[ws.get(f"gc{e}_{i}", (width, w.shape[-1]), obs) for i, w in enumerate(weights[:-1])]
                   for e in range(num)]
        g_states = [ws.get(f"g_states{e}", (batch, weights[0].shape[-1]), obs) for e in range(num)]
        want_params = ctx.needs_input_grad[6]
        grads = [torch.empty_like(p) for p in params] if want_params else [None] * len(params)
        grad_obs = torch.zeros((num, *obs.shape), dtype=obs.dtype) if ctx.needs_input_grad[0] else None
        grad_a = torch.zeros(num, m, act_dim, dtype=obs.dtype) if ctx.needs_input_grad[1] else None
        grad_q = grad_q.contiguous()

        def member(e: int) -> None:
            gq, g_st = grad_q[e, :, 0], g_states[e]
            w_state, w_act = weights[0][e, :obs_dim], weights[0][e, obs_dim:]
            if want_params:
                grads[-1][e].copy_(gq.sum())
            for c, (s0, s1, r0, r1) in enumerate(chunks):
                if want_params:  # head weight gradient on the chunk while its activations are in cache
                    torch.addmv(grads[-2][e, :, 0], acts[-1][e, r0:r1].t(), gq[r0:r1], beta=float(c > 0),
                                out=grads[-2][e, :, 0])
                g = torch.outer(gq[r0:r1], weights[-1][e, :, 0], out=scratch[e][-1][: r1 - r0])
                if grad_features is not None:
                    g.add_(grad_features[e, r0:r1])
                torch.ops.aten.threshold_backward.grad_input(g, acts[-1][e, r0:r1], 0, grad_input=g)
                for i in range(depth - 1, 0, -1):
                    h_in = acts[i - 1][e, r0:r1]
                    if want_params:
                        if c == 0:
                            torch.mm(h_in.t(), g, out=grads[2 * i][e])
                            torch.sum(g, 0, keepdim=True, out=grads[2 * i + 1][e])
                        else:
                            grads[2 * i][e].addmm_(h_in.t(), g)
                            grads[2 * i + 1][e].add_(g.sum(0, keepdim=True))
                    g_in = torch.mm(g, weights[i][e].t(), out=scratch[e][i - 1][: r1 - r0])
                    g = torch.ops.aten.threshold_backward.grad_input(g_in, h_in, 0, grad_input=g_in)
                if want_params:
                    if c == 0:
                        torch.mm(a2d[r0:r1].t(), g, out=grads[0][e, obs_dim:])
                    else:
                        grads[0][e, obs_dim:].addmm_(a2d[r0:r1].t(), g)
                if n == 1:
                    g_st[s0:s1].copy_(g)
                else:
                    torch.sum(g.view(s1 - s0, n, -1), 1, out=g_st[s0:s1])
                if grad_a is not None:
                    torch.mm(g, w_act.t(), out=grad_a[e, r0:r1])
            if want_params:
                torch.mm(obs.t(), g_st, out=grads[0][e, :obs_dim])
                torch.sum(g_st, 0, keepdim=True, out=grads[1][e])
            if grad_obs is not None:
                torch.mm(g_st, w_state.t(), out=grad_obs[e])

        for_each_member(member, num, ctx.parallel)
        grad_obs = grad_obs.sum(0) if grad_obs is not None else None
        grad_actions = grad_a.sum(0).view(batch, n, act_dim) if grad_a is not None else None
        return (grad_obs, grad_actions, None, None, None, None, *grads)
