"""The sparse-coding frontend of Bakiskan et al. (paper Section 3, Appendix A).

encoder (conv with the dictionary atoms, 4x4 patches, stride 2: 32x32x3 -> 15x15x500)
-> top-T by |value| per patch -> ternary activation (eq. 3) -> decoder (three transposed
convolutions, each followed by ReLU) -> centre crop to 32x32 (output >= 0, not clamped).

Exact forward passes are non-differentiable (top-T, sign/threshold). The BPDA stand-ins
(:class:`StandIn`) return *bitwise the same values* (``exact_forward = True``: the engine then
runs them alone) but route gradients through smooth approximations, component by component
(straight-through style), so the decoder's Jacobian is evaluated at the exact point.

Size arithmetic: encoder m = (32 - 4) // 2 + 1 = 15; ConvT(k4, s2): (15 - 1) * 2 + 4 = 32;
ConvT(k3): 34; ConvT(k3): 36; centre crop 2 pixels each side -> 32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robust_bench_sc.paths import reference_dir

PATCH = 4
STRIDE = 2
N_ATOMS = 500
BETA = 3.0
EPSILON = 8.0 / 255.0
STEEPNESS = 4.0
DICTIONARY_FILE = "cifar10_dictionary_p4_s2_L500.npz"


# --------------------------------------------------------------------------- dictionary
def atoms_to_filters(atoms: np.ndarray | torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """(L, patch*patch*3) atoms flattened in (height, width, channel) order -> (L, 3, p, p)."""
    a = torch.as_tensor(np.asarray(atoms), dtype=torch.float32)
    if a.ndim != 2 or a.shape[1] != patch * patch * 3:
        raise ValueError(f"atoms must have shape (L, {patch * patch * 3}), got {tuple(a.shape)}")
    return a.view(a.shape[0], patch, patch, 3).permute(0, 3, 1, 2).contiguous()


def load_dictionary(path: str | Path | None = None) -> torch.Tensor:
    """Dictionary atoms as conv filters (L, 3, 4, 4); default: the reference dictionary."""
    path = Path(path) if path else reference_dir() / DICTIONARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"dictionary not found: {path} (an .npz with key 'atoms', shape (L, 48))")
    with np.load(path) as f:
        if "atoms" not in f:
            raise ValueError(f"{path} has no 'atoms' array (keys: {list(f.keys())})")
        atoms = f["atoms"]
    return atoms_to_filters(atoms)


# --------------------------------------------------------------------------- pieces
def top_t_indices(c: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k, H, W) of the k largest |c| along the atom axis (sorted, largest first)."""
    return c.abs().topk(k, dim=1, sorted=True).indices


def top_u_indices(c: torch.Tensor, t: int, u: int) -> torch.Tensor:
    """Indices (B, u, H, W): ranks 1..t are exactly ``top_t_indices(c, t)`` (the exact forward's
    call, so its choice among tied |c| is kept), ranks t+1..u the u - t largest |c| among the
    other atoms (sorted). ``topk(u)``'s first t alone can differ from ``topk(t)`` where |c| ties
    at rank t / t+1, which would make a stand-in's forward differ from the exact one."""
    idx_t = top_t_indices(c, t)
    if u == t:
        return idx_t
    rest = c.abs().scatter(1, idx_t, float("-inf"))  # the exact top-t can never be picked again
    return torch.cat([idx_t, rest.topk(u - t, dim=1, sorted=True).indices], 1)


def top_t(c: torch.Tensor, k: int) -> torch.Tensor:
    """``c`` with all but the k largest |c| per patch (atom axis 1) set to zero."""
    idx = top_t_indices(c, k)
    return torch.zeros_like(c).scatter(1, idx, c.gather(1, idx))


def ternary(c: torch.Tensor, l1: torch.Tensor, beta: float = BETA, epsilon: float = EPSILON) -> torch.Tensor:
    """Eq. (3): sign(c) * ||d||_1 where |c| / (eps ||d||_1) >= beta, else 0. ``l1`` broadcasts to c."""
    keep = c.abs() >= beta * epsilon * l1
    return torch.where(keep, torch.sign(c) * l1, torch.zeros_like(c))


def smooth_ternary(c: torch.Tensor, l1: torch.Tensor, beta: float = BETA, epsilon: float = EPSILON,
                   steepness: float = STEEPNESS) -> torch.Tensor:
    """The smooth approximation of Fig. 3: ||d|| * 0.5 (tanh(s(u - j)) + tanh(s(u + j))), u = c/||d||_1, j = beta eps."""
    u = c / l1
    j = beta * epsilon
    return l1 * 0.5 * (torch.tanh(steepness * (u - j)) + torch.tanh(steepness * (u + j)))


class _StraightThrough(torch.autograd.Function):
    """Forward: ``exact`` (bitwise, a copy); backward: the gradient passes to ``approx`` unchanged."""

    @staticmethod
    def forward(ctx, exact, approx):
        return exact.clone()

    @staticmethod
    def backward(ctx, g):
        return None, g


def straight_through(exact: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Value of ``exact`` (bitwise: not approx + (exact - approx).detach(), which rounds) with the
    gradient of ``approx``."""
    if exact.shape != approx.shape:
        raise ValueError(f"straight_through: exact {tuple(exact.shape)} and approx {tuple(approx.shape)} differ in shape")
    return _StraightThrough.apply(exact.detach(), approx)


# --------------------------------------------------------------------------- fast first layer
# ConvTranspose2d(L -> C, k4, s2) from the K active atoms per patch:
#   out[b, 2i + ki, 2j + kj, o] += sum_t val[b, t, i, j] * W[idx[b, t, i, j], o, ki, kj]
# Forward, per output pixel: with the patch grid padded by one empty patch on each side, the
# pixel y = 2p + s (s in {0, 1}) is covered by padded patch rows p (kernel row s + 2) and p + 1
# (kernel row s), and likewise for columns. So every output pixel is a sum of exactly 4 K weight
# rows of length C from the table W8[(atom * 16 + ki * 4 + kj)] = W[atom, :, ki, kj] (the empty
# patch points at 16 zero rows), with the patch's value as weight: one fixed-size
# ``F.embedding_bag`` that writes the (B, H, W, C) output directly (channels-last, what
# deconv2 runs fastest on) with no (B*m*m, 16*C) intermediate and no col2im.
# Backward (per patch, rows in (ki, kj, o) order, g = im2col of grad_out): the weight gradient is
# a sparse (COO) matmul Z^T @ g; the value gradient is <g[n], W[idx[n, t]]> for the K gathered
# entries only (embedding_bag's per-sample-weights backward), not a GEMM against all L atoms.
_PSW_BACKWARD = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)


def _kernel_offsets() -> torch.Tensor:
    """(s, r, da, dc) -> kernel position (s + 2 - 2 da) * 4 + (r + 2 - 2 dc)."""
    off = torch.empty(2, 2, 2, 2, dtype=torch.int32)
    for s in range(2):
        for r in range(2):
            for da in range(2):
                for dc in range(2):
                    off[s, r, da, dc] = (s + 2 - 2 * da) * 4 + (r + 2 - 2 * dc)
    return off


_KERNEL_OFFSETS = _kernel_offsets()


def _pixel_bags(idx: torch.Tensor, val: torch.Tensor, n_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, weights), each (B * (2m+2)^2, 4K): the weight rows and values summed into each output pixel."""
    b, k, m, _ = idx.shape
    q = m + 1  # output pixels per axis = 2 q
    ip = F.pad(idx.to(torch.int32), (1, 1, 1, 1), value=n_atoms).permute(0, 2, 3, 1)  # (b, m+2, m+2, k)
    vp = F.pad(val, (1, 1, 1, 1), value=0.0).permute(0, 2, 3, 1)
    ti = torch.stack([ip[:, da:da + q, dc:dc + q] for da in (0, 1) for dc in (0, 1)], 3)  # (b, q, q, 4, k)
    tv = torch.stack([vp[:, da:da + q, dc:dc + q] for da in (0, 1) for dc in (0, 1)], 3)
    rows = (ti * 16).view(b, q, 1, q, 1, 2, 2, k) + _KERNEL_OFFSETS.to(ti.device).view(1, 1, 2, 1, 2, 2, 2, 1)
    vals = tv.view(b, q, 1, q, 1, 2, 2, k).expand(b, q, 2, q, 2, 2, 2, k)
    return rows.reshape(b * 4 * q * q, 4 * k), vals.reshape(b * 4 * q * q, 4 * k)


def _im2col_nhwc(g: torch.Tensor, m: int) -> torch.Tensor:
    gh = g.permute(0, 2, 3, 1)  # (B, H, W, C)
    b, c = gh.shape[0], gh.shape[-1]
    r = gh.new_empty(b, m, m, 4, 4, c)
    for ki in range(4):
        for kj in range(4):
            r[:, :, :, ki, kj, :] = gh[:, ki:ki + 2 * m - 1:2, kj:kj + 2 * m - 1:2, :]
    return r.view(b * m * m, 16 * c)


def _gathered_dots(g: torch.Tensor, wr: torch.Tensor, fi: torch.Tensor) -> torch.Tensor:
    """out[n, t] = <g[n], wr[fi[n, t]]> for the (N, K) gathered rows only."""
    n, k = fi.shape
    if _PSW_BACKWARD is None:  # older/newer torch without the op: one GEMM against all rows, then a gather
        return (g @ wr.t()).gather(1, fi)
    offsets = torch.arange(0, n * k, k, device=fi.device)
    bag_of = torch.arange(n, device=fi.device).repeat_interleave(k)
    return _PSW_BACKWARD(g, wr, fi.reshape(-1), offsets, bag_of, 0, -1).view(n, k)  # mode 0 = sum


class _SparseDeconv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, val, w, bias):
        b, k, m, _ = idx.shape
        n_atoms, c = w.shape[0], w.shape[1]
        table = torch.cat([w.permute(0, 2, 3, 1).reshape(n_atoms * 16, c), w.new_zeros(16, c)])
        # trailing ranks whose value is 0 in every patch (a stand-in's ranks T+1..U) add exactly
        # 0 to every sum: leave them out of the forward bags (the backward still sees all K)
        used = val.detach().ne(0).flatten(2).any(2).any(0).nonzero()
        k_fwd = int(used[-1]) + 1 if used.numel() else 1
        rows, vals = _pixel_bags(idx[:, :k_fwd], val[:, :k_fwd].to(w.dtype), n_atoms)
        out = F.embedding_bag(rows, table, per_sample_weights=vals, mode="sum")
        size = 2 * m + 2
        out = out.view(b, size, size, c)
        if bias is not None:
            out.add_(bias)
        ctx.save_for_backward(idx, val, w)
        ctx.has_bias = bias is not None
        return out.permute(0, 3, 1, 2)  # NCHW view, channels-last memory

    @staticmethod
    def backward(ctx, grad_out):
        idx, val, w = ctx.saved_tensors
        b, k, m, _ = idx.shape
        n_atoms, c = w.shape[0], w.shape[1]
        _, need_val, need_w, need_bias = ctx.needs_input_grad
        grad_val = grad_w = grad_bias = None
        if need_bias and ctx.has_bias:
            grad_bias = grad_out.sum(dim=(0, 2, 3))
        if not (need_val or need_w):
            return None, None, None, grad_bias
        g = _im2col_nhwc(grad_out, m)  # (B*m*m, 16*C), rows in (ki, kj, o) order
        fi = idx.permute(0, 2, 3, 1).reshape(-1, k)
        if need_w:
            n = fi.shape[0]
            fv = val.permute(0, 2, 3, 1).reshape(-1).to(w.dtype)
            rows_i = torch.arange(n, device=fi.device).repeat_interleave(k)
            zt = torch.sparse_coo_tensor(torch.stack([fi.reshape(-1), rows_i]), fv,
                                         (n_atoms, n), check_invariants=False).coalesce()
            gw = torch.sparse.mm(zt, g)  # (L, 16*C)
            grad_w = gw.view(n_atoms, 4, 4, c).permute(0, 3, 1, 2)
        if need_val:
            wr = w.permute(0, 2, 3, 1).reshape(n_atoms, 16 * c)
            gv = _gathered_dots(g, wr, fi)
            grad_val = gv.view(b, m, m, k).permute(0, 3, 1, 2).to(val.dtype)
        return None, grad_val, grad_w, grad_bias


# --------------------------------------------------------------------------- decoder
class Decoder(nn.Module):
    """ConvT 500->300 (k4, s2), ReLU, ConvT 300->100 (k3), ReLU, ConvT 100->3 (k3), ReLU; centre crop to 32.

    The paper: "three transposed convolution layers followed by ReLU activations after each
    layer". No clamp to [0, 1]: the output feeds the classifier, not a display, and a clamp at 1
    saturated (zero gradient) in our first CPU run, killing the decoder at step 40.

    ``forward_dense(z)`` takes the dense (B, 500, 15, 15) code. ``forward_sparse(idx, val)``
    takes the K active atoms per patch (idx (B, K, 15, 15) long, val the same shape) and
    computes the first transposed convolution exactly as a gather-and-sum of weight rows per
    output pixel (``embedding_bag``, see ``_SparseDeconv``): O(K) instead of O(L) per patch.
    """

    def __init__(self, n_atoms: int = N_ATOMS, out_size: int = 32, widths: tuple[int, int] = (300, 100)):
        super().__init__()
        self.n_atoms = n_atoms
        self.out_size = out_size
        w1, w2 = widths
        self.deconv1 = nn.ConvTranspose2d(n_atoms, w1, kernel_size=4, stride=2)
        self.deconv2 = nn.ConvTranspose2d(w1, w2, kernel_size=3, stride=1)
        self.deconv3 = nn.ConvTranspose2d(w2, 3, kernel_size=3, stride=1)

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        h = F.relu(h)
        h = F.relu(self.deconv2(h))
        h = F.relu(self.deconv3(h))
        off = (h.shape[-1] - self.out_size) // 2
        h = h[..., off:off + self.out_size, off:off + self.out_size]
        return h  # >= 0 (ReLU); not clamped to [0, 1]: see docs/sparse_coding.md

    def first_dense(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv1(z)

    def first_sparse(self, idx: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        """The first transposed convolution from the K active atoms per patch (exact)."""
        w = self.deconv1.weight  # (L, C_out, kh, kw)
        if tuple(self.deconv1.stride) != (2, 2) or tuple(w.shape[-2:]) != (4, 4):
            raise ValueError("first_sparse is written for kernel 4, stride 2")
        return _SparseDeconv.apply(idx, val, w, self.deconv1.bias)

    def forward_dense(self, z: torch.Tensor) -> torch.Tensor:
        return self._tail(self.first_dense(z))

    def forward_sparse(self, idx: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        return self._tail(self.first_sparse(idx, val))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward_dense(z)


def scatter_dense(idx: torch.Tensor, val: torch.Tensor, n_atoms: int) -> torch.Tensor:
    shape = (idx.shape[0], n_atoms, *idx.shape[2:])
    return torch.zeros(shape, dtype=val.dtype, device=val.device).scatter(1, idx, val)


# --------------------------------------------------------------------------- frontend
class SparseCodingFrontend(nn.Module):
    """The exact (non-differentiable) frontend: images in [0, 1] -> decoder output (B, 3, 32, 32).

    ``fast=True`` (default) uses the gather formulation of the first transposed convolution;
    ``fast=False`` the dense ConvTranspose2d. Both give the same values (up to float rounding).
    """

    def __init__(self, T: int = 15, dictionary: torch.Tensor | None = None, beta: float = BETA,
                 epsilon: float = EPSILON, fast: bool = True, widths: tuple[int, int] = (300, 100)):
        super().__init__()
        filters = load_dictionary() if dictionary is None else dictionary
        self.register_buffer("atoms", filters.clone())
        self.register_buffer("l1", filters.abs().sum(dim=(1, 2, 3)).view(1, -1, 1, 1).clone())
        self.T, self.beta, self.epsilon, self.fast = int(T), float(beta), float(epsilon), fast
        self.decoder = Decoder(n_atoms=filters.shape[0], widths=tuple(widths))

    # encoder coefficients (B, L, 15, 15)
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.atoms, stride=STRIDE)

    def sparse_code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx, activated values) of the top-T atoms per patch, no gradient."""
        with torch.no_grad():
            c = self.encode(x)
            idx = top_t_indices(c, self.T)
            l1 = self.l1.expand_as(c).gather(1, idx)
            val = ternary(c.gather(1, idx), l1, self.beta, self.epsilon)
        return idx, val

    def forward_autograd(self, x: torch.Tensor) -> torch.Tensor:
        """The exact frontend with autograd left on (dense path): its input gradient is zero
        almost everywhere (top-T selection and sign/threshold) -- why attacks need BPDA."""
        c = self.encode(x)
        idx = top_t_indices(c.detach(), self.T)
        l1 = self.l1.expand_as(c).gather(1, idx)
        val = ternary(c.gather(1, idx), l1, self.beta, self.epsilon)
        return self.decoder.forward_dense(scatter_dense(idx, val, self.atoms.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx, val = self.sparse_code(x)
        if self.fast:
            return self.decoder.forward_sparse(idx, val)
        return self.decoder.forward_dense(scatter_dense(idx, val, self.atoms.shape[0]))


class StandIn(nn.Module):
    """A BPDA stand-in for :class:`SparseCodingFrontend`: same forward values, usable gradients.

    smooth: the activation's backward is the derivative of the smooth approximation with
        ``steepness`` (paper A.4); else identity (straight-through) for the activation.
    U: gradients flow through the top U >= T coefficients per patch (paper A.5; forward still
        keeps only the top T). U = T: gradients through the kept T only.
    Shares the frontend's buffers and decoder (not a copy), so it follows any weight update.

    ``exact_forward = True`` (the engine's plug-in contract, ``robust_bench_sc.defense``): the
    forward value is bitwise the exact frontend's -- ranks 1..T are the exact forward's own
    ``top_t_indices`` call (ties broken the same way), the values are the exact ternary values
    (``_StraightThrough``, no rounding), ranks T+1..U carry exact zeros, which the sparse first
    layer skips -- so the engine runs the stand-in alone (one forward + backward per step).
    """

    exact_forward = True

    def __init__(self, frontend: SparseCodingFrontend, smooth: bool, U: int | None = None,
                 steepness: float = STEEPNESS):
        super().__init__()
        self.frontend = frontend
        self.smooth = smooth
        self.U = int(U) if U is not None else frontend.T
        if self.U < frontend.T:
            raise ValueError(f"U must be >= T ({frontend.T}), got {self.U}")
        self.steepness = steepness

    def code_from_coefficients(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx, val) of the top-U atoms per patch: values exact (ranks T+1..U are 0), gradients approximate."""
        fe = self.frontend
        n = min(self.U, c.shape[1])
        idx = top_u_indices(c.detach(), fe.T, n)  # ranks 1..T: the exact forward's top-T
        cu = c.gather(1, idx)
        l1 = fe.l1.expand_as(c).gather(1, idx)
        exact = ternary(cu.detach(), l1, fe.beta, fe.epsilon)
        exact[:, fe.T:] = 0.0  # ranks T+1..U are dropped in the forward pass
        approx = smooth_ternary(cu, l1, fe.beta, fe.epsilon, self.steepness) if self.smooth else cu
        return idx, straight_through(exact, approx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fe = self.frontend
        idx, val = self.code_from_coefficients(fe.encode(x))
        if fe.fast:
            return fe.decoder.forward_sparse(idx, val)
        return fe.decoder.forward_dense(scatter_dense(idx, val, fe.atoms.shape[0]))


def make_stand_ins(frontend: SparseCodingFrontend, steepness: float = STEEPNESS) -> dict[str, nn.Module]:
    T = frontend.T
    return {
        "smooth": StandIn(frontend, smooth=True, U=T, steepness=steepness),
        "top_u": StandIn(frontend, smooth=False, U=2 * T),
        "smooth_top_u": StandIn(frontend, smooth=True, U=2 * T, steepness=steepness),
    }
