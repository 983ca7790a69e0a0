"""Factored linear layers: ``CURLinear`` (``C @ U @ R``), ``InterpolativeLinear`` (kept rows
plus interpolation coefficients) and ``LowRankLinear`` (``A @ B``); none ever forms the dense
weight."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = [
    "FACTORED_LINEARS",
    "LAYERS",
    "CURLinear",
    "GatheredLinear",
    "InterpolativeLinear",
    "LowRankLinear",
    "SAVED_LINEARS",
    "ScatteredLinear",
    "TRANSPOSED_FROM",
    "fold",
    "break_even_rank",
    "cur_params",
    "interpolative_break_even_rank",
    "interpolative_params",
    "svd_break_even_rank",
    "svd_params",
]

_ERR_SHAPES = (
    "CURLinear expects C (out x r), U (r x r) and R (r x in) with matching r, got C {c}, U {u}, "
    "R {r}; build it with CURLinear.from_linear(...) or pass consistent factors"
)
_ERR_INDEX = (
    "CURLinear expects rows (r,) indices into the output dimension and cols (r,) into the input "
    "dimension, got rows {rows} and cols {cols} for r={rank}; pass the indices used to cut C and R"
)


def cur_params(out_features: int, in_features: int, rank: int, /) -> int:
    """Parameters of a rank-``rank`` CUR factorisation of an ``out x in`` weight (no bias).

    Parameters
    ----------
    out_features, in_features, rank : int
        Shape of the weight and the rank.

    Returns
    -------
    int
        ``rank * (out_features + in_features) + rank ** 2``: C, U and R all count.

    Examples
    --------
    >>> cur_params(576, 576, 36)
    42768
    """
    return rank * (out_features + in_features) + rank * rank


def break_even_rank(out_features: int, in_features: int, /) -> int:
    """Largest rank at which a CUR factorisation is strictly smaller than the dense weight.

    Parameters
    ----------
    out_features, in_features : int
        Shape of the weight.

    Returns
    -------
    int
        Largest ``r`` with ``r (m + n) + r^2 < m n``; 0 if none.

    Notes
    -----
    The positive root of ``r^2 + (m + n) r - m n = 0`` is
    ``r* = (sqrt((m + n)^2 + 4 m n) - (m + n)) / 2``; the result is the largest integer strictly
    below it (CURing 2025, Sec. 3).

    Examples
    --------
    >>> break_even_rank(576, 576)
    238
    """
    m, n = out_features, in_features
    r = int(((m + n) ** 2 + 4 * m * n) ** 0.5 - (m + n)) // 2 + 1
    while r > 0 and cur_params(m, n, r) >= m * n:
        r -= 1
    return r


def _shared_linear(weight: torch.Tensor, bias: torch.Tensor | None, /, *, requires_grad: bool) -> nn.Linear:
    """An :class:`torch.nn.Linear` whose parameters are ``weight`` (out x in) and ``bias``, storage shared.

    For views of other layouts (``Conv1D``'s transposed weight, one expert of a fused 3-D
    parameter): no copy is made, so writing through either writes both.
    """
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(weight, requires_grad=requires_grad)
    if bias is not None:
        lin.bias = nn.Parameter(bias, requires_grad=requires_grad)
    return lin


def _complement(rows: torch.Tensor, size: int, /) -> torch.Tensor:
    """The indices in ``range(size)`` not in ``rows``, increasing, on ``rows``' device."""
    keep = torch.zeros(size, dtype=torch.bool, device=rows.device)
    keep[rows] = True
    return torch.nonzero(~keep).reshape(-1)


def _gather_order(rows: torch.Tensor, rest: torch.Tensor, /) -> torch.Tensor:
    """``argsort(cat(rows, rest))``: the position of each output index in ``cat(z, P z)``."""
    return torch.argsort(torch.cat((rows, rest)))


def _weight_of(linear: nn.Module) -> torch.Tensor:
    W = getattr(linear, "weight", None)
    if not isinstance(W, torch.Tensor) or W.ndim != 2:
        raise TypeError(f"from_linear expects a module with a 2-D weight (nn.Linear), got {type(linear).__name__}")
    return W


class _FactoredLinear(nn.Module):
    """What both factored layers share: folding back to dense, and the repr.

    Subclasses name their storage ``form`` (recorded in checkpoints) and their trainable
    ``core`` (the parameter :func:`adapters.heal.heal` trains).
    """

    form: str
    core: str

    @classmethod
    def empty(cls, m: int, n: int, rank: int, /, *, bias: bool, dtype=None, device=None):
        """An uninitialised layer of the given shape, for a checkpoint to be loaded into.

        Parameters
        ----------
        m, n, rank : int
            Output and input features, and the rank.
        bias : bool
            Whether the layer has a bias.
        dtype : torch.dtype, optional
            Of the parameters (default: torch's default dtype); the index buffers are int64.
        device : str or torch.device, optional
            ``"meta"`` allocates nothing: this is how ``from_pretrained`` builds the layers
            before their tensors are read (:mod:`adapters.hf_quantizer`).

        Returns
        -------
        CURLinear, InterpolativeLinear or LowRankLinear
            Parameters and index buffers of the right shapes, with undefined values; nothing
            is validated until values are loaded.

        Raises
        ------
        ValueError
            If ``rank`` is not allowed for this form.
        """
        params, buffers = cls._layout(m, n, rank)
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features, layer.rank = m, n, rank
        for name, shape in params.items():
            setattr(layer, name, nn.Parameter(torch.empty(shape, dtype=dtype, device=device)))
        layer.bias = nn.Parameter(torch.empty(m, dtype=dtype, device=device)) if bias else None
        for name, shape in buffers.items():
            layer.register_buffer(name, torch.empty(shape, dtype=torch.long, device=device))
        return layer

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """Fold back into a dense :class:`torch.nn.Linear` with weight :meth:`weight_product`.

        Returns
        -------
        torch.nn.Linear
            Same device, dtype and bias.

        Notes
        -----
        In half precision the product is formed in float32 and rounded once, so the dense
        weight is the factored one up to a single rounding of each entry.
        """
        first = next(self.parameters())
        dtype = first.dtype
        low = dtype in (torch.float16, torch.bfloat16)
        source = copy.deepcopy(self).float() if low else self
        lin = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None,
            device=first.device, dtype=dtype,
        )
        lin.weight.copy_(source.weight_product())
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"bias={self.bias is not None}"
        )


class CURLinear(_FactoredLinear):
    """Linear map ``y = x R^T U^T C^T + b`` with ``W ~ C U R``.

    Parameters
    ----------
    C : torch.Tensor
        ``(out_features, rank)``: columns of the weight (CURing) or of the activation-weighted
        weight ``W L``, ``L L^T = X^T X`` (``form="cur"`` of :func:`adapters.compress`).
    U : torch.Tensor
        ``(rank, rank)`` core.
    R : torch.Tensor
        ``(rank, in_features)``, rows of the original weight.
    bias : torch.Tensor, optional
        ``(out_features,)``.
    rows, cols : torch.Tensor, optional
        int64 indices of the kept rows (outputs) and columns (inputs), stored as buffers for
        inspection and serialization; ``-1`` when unknown.

    Notes
    -----
    The forward pass applies the three factors right to left, ``((x R^T) U^T) C^T``, costing
    ``r (m + n) + r^2`` multiply-adds per token instead of ``m n``; the dense weight is never
    formed.  ``U`` is kept separate (rather than folded into ``C`` or ``R``) so that ``C`` and
    ``R`` stay actual columns and rows (see ``C`` above) and the parameter count is the honest
    ``r (m + n) + r^2``.  This class deliberately does not subclass :class:`torch.nn.Linear`:
    other libraries would treat it as a dense layer.

    References
    ----------
    Sorensen & Embree (2016), "A DEIM induced CUR factorization", SIAM J. Sci. Comput.
    CURing (2025), "CURing Large Models: Compression via CUR Decomposition", arXiv 2501.04211.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(6, 4, bias=False)
    >>> layer = CURLinear.from_linear(lin, rows=[0, 2], cols=[1, 5], U=torch.eye(2))
    >>> layer(torch.ones(3, 6)).shape
    torch.Size([3, 4])
    >>> sum(p.numel() for p in layer.parameters()) == cur_params(4, 6, 2)
    True
    """

    form = "cur"
    core = "U"

    def __init__(self, C, U, R, /, *, bias=None, rows=None, cols=None):
        super().__init__()
        if C.ndim != 2 or U.ndim != 2 or R.ndim != 2 or not (
            C.shape[1] == U.shape[0] == U.shape[1] == R.shape[0]
        ):
            raise ValueError(_ERR_SHAPES.format(c=tuple(C.shape), u=tuple(U.shape), r=tuple(R.shape)))
        rank = U.shape[0]
        if bias is not None and bias.shape != (C.shape[0],):
            raise ValueError(
                f"bias must have shape ({C.shape[0]},) to match C, got {tuple(bias.shape)}"
            )
        rows = torch.full((rank,), -1, dtype=torch.long) if rows is None else torch.as_tensor(rows)
        cols = torch.full((rank,), -1, dtype=torch.long) if cols is None else torch.as_tensor(cols)
        if rows.shape != (rank,) or cols.shape != (rank,):
            raise ValueError(_ERR_INDEX.format(rows=tuple(rows.shape), cols=tuple(cols.shape), rank=rank))
        self.in_features = R.shape[1]
        self.out_features = C.shape[0]
        self.rank = rank
        self.C = nn.Parameter(C.detach().clone(memory_format=torch.contiguous_format))
        self.U = nn.Parameter(U.detach().clone(memory_format=torch.contiguous_format))
        self.R = nn.Parameter(R.detach().clone(memory_format=torch.contiguous_format))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(memory_format=torch.contiguous_format))
        self.register_buffer("rows", rows.to(device=C.device, dtype=torch.long))
        self.register_buffer("cols", cols.to(device=C.device, dtype=torch.long))

    @classmethod
    def from_linear(cls, linear: nn.Linear, /, *, rows, cols, U, C=None, R=None) -> "CURLinear":
        """Build from a dense linear layer, its kept indices and a core.

        Parameters
        ----------
        linear : torch.nn.Linear
            The dense layer; its weight supplies ``C = W[:, cols]`` and ``R = W[rows, :]``.
        rows, cols : array-like of int
            Kept output rows and input columns (same length ``r``).
        U : torch.Tensor
            ``(r, r)`` core, cast to the layer's dtype.
        C, R : torch.Tensor, optional
            Override the cut factors (for example a fitted ``C``); default the cuts of ``W``.

        Returns
        -------
        CURLinear
            On the layer's device and in its dtype.

        Raises
        ------
        TypeError
            If ``linear`` has no 2-D ``weight``.
        """
        W = _weight_of(linear)
        rows = torch.as_tensor(rows, dtype=torch.long, device=W.device)
        cols = torch.as_tensor(cols, dtype=torch.long, device=W.device)
        with torch.no_grad():
            C = W[:, cols] if C is None else C.to(W)
            R = W[rows, :] if R is None else R.to(W)
            return cls(C, U.to(W), R, bias=linear.bias, rows=rows, cols=cols)

    @staticmethod
    def _layout(m: int, n: int, rank: int, /) -> tuple[dict, dict]:
        if rank < 1:
            raise ValueError(f"a CURLinear needs rank >= 1, got {rank}")
        return {"C": (m, rank), "U": (rank, rank), "R": (rank, n)}, {"rows": (rank,), "cols": (rank,)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(nn.functional.linear(nn.functional.linear(x, self.R), self.U), self.C)
        return y if self.bias is None else y + self.bias

    def weight_product(self) -> torch.Tensor:
        """The dense weight ``C @ U @ R`` (``out x in``); for inspection and :meth:`to_linear`."""
        return self.C @ (self.U @ self.R)



#: From this many tokens on, :class:`InterpolativeLinear` places its outputs as rows of the
#: transposed output. Measured on CPU, a 2048-token prefill of SmolLM2-135M at -20%: the two
#: out-of-place scatters along the last dimension took 15% of the pass (``index_copy`` 8%, its
#: copies 7%), and the prefill ran 1.45x faster without them (benchmarks/inference_cpu.py
#: ``--before``).
TRANSPOSED_FROM = 64


def interpolative_params(out_features: int, in_features: int, rank: int, /) -> int:
    """Parameters of a rank-``rank`` row interpolative factorisation (no bias).

    Parameters
    ----------
    out_features, in_features, rank : int
        Shape of the weight and the rank.

    Returns
    -------
    int
        ``rank * in_features + (out_features - rank) * rank``: the kept rows ``R`` and the
        coefficients of the other rows; the identity block of the kept rows is not stored.

    Examples
    --------
    >>> interpolative_params(576, 576, 36)
    40176
    """
    return rank * in_features + (out_features - rank) * rank


def interpolative_break_even_rank(out_features: int, in_features: int, /) -> int:
    """Largest rank at which a row interpolative factorisation is smaller than the dense weight.

    Parameters
    ----------
    out_features, in_features : int
        Shape of the weight.

    Returns
    -------
    int
        ``min(m, n) - 1`` (0 for a ``1 x n`` or ``m x 1`` weight).

    Notes
    -----
    ``r n + (m - r) r < m n`` is ``(m - r)(n - r) > 0``, so every ``r < min(m, n)`` saves
    parameters.

    Examples
    --------
    >>> interpolative_break_even_rank(192, 576)
    191
    """
    return max(min(out_features, in_features) - 1, 0)


_ERR_ROWS = (
    "InterpolativeLinear expects rows: {rank} distinct indices in [0, {m}) (the kept output rows, "
    "one per row of R), got {got}; pass the indices R was cut with"
)


class InterpolativeLinear(_FactoredLinear):
    """Linear map from kept weight rows: ``y[I] = R x``, ``y[rest] = P (R x)``, plus bias.

    The row interpolative decomposition ``W ~ X R`` with ``R = W[I, :]`` (``r`` kept rows) and
    ``X[I, :] = I_r``: the kept outputs are computed exactly from their own weight rows and the
    others interpolated from them.  This is the skeleton (CUR) form stored without redundancy: a
    CUR ``C U R`` that reproduces its kept rows has ``(C U)[I, :] = I``, so storing ``C`` and
    ``U`` spends ``m r + r^2`` parameters on ``C U``, of which only the ``(m - r) r`` entries of
    ``P = (C U)[rest, :]`` are free.

    Parameters
    ----------
    P : torch.Tensor
        ``(out_features - rank, rank)``: interpolation coefficients of the rows not kept, in
        increasing order of their index.
    R : torch.Tensor
        ``(rank, in_features)``: the kept rows (of the weight, or of its low-rank approximation).
    rows : array-like of int
        ``(rank,)`` distinct output indices of the kept rows, one per row of ``R``.
    bias : torch.Tensor, optional
        ``(out_features,)``.

    Notes
    -----
    Forward cost ``r n + (m - r) r`` multiply-adds per token, the parameter count
    (:func:`interpolative_params`), ``r^2`` fewer than a rank-``r`` SVD and ``2 r^2`` fewer
    than a rank-``r`` ``C U R``; every ``r < min(m, n)`` is smaller than dense.  Buffers
    ``rows`` and ``rest`` (the complement, increasing) place the two output blocks. Below
    :data:`TRANSPOSED_FROM` tokens (decoding) the blocks are concatenated and put in order
    by one gather along the last dimension (fewest calls: each costs more than its bytes
    there), by the non-persistent buffer ``order`` (:meth:`rebuild_order`). From
    :data:`TRANSPOSED_FROM` tokens on (prefill, training) they are placed as rows of the
    transposed output ``y^T`` (contiguous rows), then either copied into the
    usual layout (one transposing copy) or, when ``feature_major_output`` is set, returned as
    the transposed view ``(y^T)^T`` without the copy: the same values with strides
    ``(1, tokens)``, which every elementwise operation and every matrix product accepts, and
    which :func:`adapters.layouts.mark_feature_major` sets where the consumer is an
    elementwise product feeding a linear layer (a gated MLP's ``gate`` and ``up``).

    References
    ----------
    Cheng, Gimbutas, Martinsson & Rokhlin (2005), "On the compression of low rank matrices",
    SIAM J. Sci. Comput. 26(4) (interpolative decomposition).  Voronin & Martinsson (2017),
    "Efficient algorithms for CUR and interpolative matrix decompositions", Adv. Comput. Math.
    Zhao et al. (2025), "Pivoting Factorization", arXiv 2501.19090 (pivot rows of low-rank LLM
    weights).

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(6, 4, bias=False)
    >>> layer = InterpolativeLinear.from_linear(lin, rows=[0, 2], P=torch.ones(2, 2))
    >>> layer(torch.ones(3, 6)).shape
    torch.Size([3, 4])
    >>> sum(p.numel() for p in layer.parameters()) == interpolative_params(4, 6, 2)
    True
    """

    form = "interpolative"
    core = "P"
    #: Return the transposed view for many tokens instead of copying it into place (see Notes).
    feature_major_output = False

    def __init__(self, P, R, /, *, rows, bias=None):
        super().__init__()
        if P.ndim != 2 or R.ndim != 2 or P.shape[1] != R.shape[0]:
            raise ValueError(
                "InterpolativeLinear expects P (out - r x r) and R (r x in) with matching r, got "
                f"P {tuple(P.shape)} and R {tuple(R.shape)}; build it with "
                "InterpolativeLinear.from_linear(...)"
            )
        rank = R.shape[0]
        m = P.shape[0] + rank
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1).to("cpu")
        if rows.shape != (rank,) or (rank and (rows.min() < 0 or rows.max() >= m)) or rows.unique().numel() != rank:
            raise ValueError(_ERR_ROWS.format(rank=rank, m=m, got=rows.tolist()[:10]))
        if bias is not None and bias.shape != (m,):
            raise ValueError(f"bias must have shape ({m},) to match P and R, got {tuple(bias.shape)}")
        self.in_features = R.shape[1]
        self.out_features = m
        self.rank = rank
        self.P = nn.Parameter(P.detach().clone(memory_format=torch.contiguous_format))
        self.R = nn.Parameter(R.detach().clone(memory_format=torch.contiguous_format))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(memory_format=torch.contiguous_format))
        self.register_buffer("rows", rows.to(R.device))
        self.register_buffer("rest", _complement(rows, m).to(R.device))
        self.register_buffer("order", _gather_order(self.rows, self.rest), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, /, *, rows, P, R=None) -> "InterpolativeLinear":
        """Build from a dense linear layer, its kept rows and the coefficients of the others.

        Parameters
        ----------
        linear : torch.nn.Linear
            The dense layer; supplies ``R = W[rows, :]`` unless ``R`` is given, and the bias.
        rows : array-like of int
            Kept output rows.
        P : torch.Tensor
            ``(out - r, r)`` coefficients of the other rows (increasing index), cast to the
            layer's dtype.
        R : torch.Tensor, optional
            Override the kept rows (for example rows of a low-rank approximation of ``W``).

        Returns
        -------
        InterpolativeLinear
            On the layer's device and in its dtype.

        Raises
        ------
        TypeError
            If ``linear`` has no 2-D ``weight``.
        """
        W = _weight_of(linear)
        rows = torch.as_tensor(rows, dtype=torch.long, device=W.device)
        with torch.no_grad():
            R = W[rows, :] if R is None else R.to(W)
            return cls(P.to(W), R, rows=rows, bias=linear.bias)

    @staticmethod
    def _layout(m: int, n: int, rank: int, /) -> tuple[dict, dict]:
        if not 0 < rank < min(m, n):
            raise ValueError(f"an InterpolativeLinear needs 0 < rank < min(out, in) = {min(m, n)}, got {rank}")
        return {"P": (m - rank, rank), "R": (rank, n)}, {"rows": (rank,), "rest": (m - rank,)}

    @classmethod
    def empty(cls, m: int, n: int, rank: int, /, *, bias: bool, dtype=None, device=None):
        """:meth:`_FactoredLinear.empty`, plus the derived buffer ``order`` (undefined until
        :meth:`rebuild_order` runs on the loaded indices)."""
        layer = super().empty(m, n, rank, bias=bias, dtype=dtype, device=device)
        layer.register_buffer("order", torch.empty(m, dtype=torch.long, device=device), persistent=False)
        return layer

    @torch.no_grad()
    def rebuild_order(self) -> None:
        """Recompute the buffer ``order`` from ``rows`` and ``rest`` (after writing them in place).

        ``order = argsort(cat(rows, rest))`` says where each output sits in ``cat(z, P z)``, the
        decoding path's gather. It is derived, not saved (a non-persistent buffer): the
        constructor, :meth:`torch.nn.Module.load_state_dict` and ``from_pretrained`` (through
        :mod:`adapters.hf_quantizer`) compute it; code that writes ``rows`` or ``rest`` in any
        other way calls this method.  Nothing is checked in :meth:`forward`, which is what lets
        ``torch.compile`` trace the layer into one graph with no guard on Python state.
        """
        self.rebuild_order_from(self.rows, self.rest)

    def rebuild_order_from(self, rows: torch.Tensor, rest: torch.Tensor, /) -> None:
        """:meth:`rebuild_order` from ``rows`` and ``rest`` read elsewhere (an offloaded layer's,
        whose own buffers stay on the meta device between forward passes)."""
        if rows.is_meta or rest.is_meta:
            return  # a shell before its tensors are loaded
        device = self.order.device if not self.order.is_meta else rows.device
        self.order = _gather_order(rows, rest).to(device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.rebuild_order()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.numel() // max(self.in_features, 1)
        if tokens < TRANSPOSED_FROM:
            z = nn.functional.linear(x, self.R)
            y = torch.cat((z, nn.functional.linear(z, self.P)), -1).index_select(-1, self.order)
        else:
            # Output rows of ``y^T`` are contiguous, so the two blocks are placed by row copies,
            # and one transposing copy lays ``y`` out (none with ``feature_major_output``); the
            # same scatter along the last dimension of ``y`` copies one strided column per index,
            # several times slower on CPU.
            xt = x.reshape(tokens, self.in_features).t()
            zt = self.R @ xt
            yt = zt.new_empty(self.out_features, tokens)
            yt.index_copy_(0, self.rows, zt)
            yt.index_copy_(0, self.rest, self.P @ zt)
            yt = yt.t() if self.feature_major_output else yt.t().contiguous()
            y = yt.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y.add_(self.bias)

    def weight_product(self) -> torch.Tensor:
        """The dense weight (``out x in``): ``R`` at ``rows``, ``P R`` elsewhere."""
        W = self.R.new_empty(self.out_features, self.in_features)
        return W.index_copy(0, self.rows, self.R).index_copy(0, self.rest, self.P @ self.R)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", form={self.form}"


def svd_params(out_features: int, in_features: int, rank: int, /) -> int:
    """Parameters of a rank-``rank`` factorisation ``A B`` of an ``out x in`` weight: ``r (m + n)``.

    Examples
    --------
    >>> svd_params(576, 576, 36)
    41472
    """
    return rank * (out_features + in_features)


def svd_break_even_rank(out_features: int, in_features: int, /) -> int:
    """Largest ``r`` with ``r (m + n) < m n``.

    Examples
    --------
    >>> svd_break_even_rank(576, 576)
    287
    """
    return (out_features * in_features - 1) // (out_features + in_features)


class LowRankLinear(_FactoredLinear):
    """``y = x B^T A^T + b`` with ``A`` (out x r) and ``B`` (r x in): the SVD baselines' layer.

    Saved and loaded like the other factored layers (form ``"svd"``, the name of the method that
    builds it); :func:`adapters.heal` does not train it (it has no core between its factors).

    Examples
    --------
    >>> import torch
    >>> LowRankLinear(torch.ones(4, 2), torch.ones(2, 6))(torch.ones(3, 6)).shape
    torch.Size([3, 4])
    """

    form = "svd"

    def __init__(self, A, B, /, *, bias=None):
        super().__init__()
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
            raise ValueError(f"expected A (m x r) and B (r x n), got {tuple(A.shape)} and {tuple(B.shape)}")
        self.out_features, self.rank = A.shape
        self.in_features = B.shape[1]
        self.A = nn.Parameter(A.detach().clone(memory_format=torch.contiguous_format))
        self.B = nn.Parameter(B.detach().clone(memory_format=torch.contiguous_format))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @staticmethod
    def _layout(m: int, n: int, rank: int, /) -> tuple[dict, dict]:
        if rank < 1:
            raise ValueError(f"a LowRankLinear needs rank >= 1, got {rank}")
        return {"A": (m, rank), "B": (rank, n)}, {}

    def forward(self, x):
        y = nn.functional.linear(nn.functional.linear(x, self.B), self.A)
        return y if self.bias is None else y + self.bias

    def weight_product(self) -> torch.Tensor:
        """The dense weight ``A @ B`` (``out x in``)."""
        return self.A @ self.B


def _hold_kept(layer, weight, bias, key: str, index, size: int, *, bias_size: int) -> None:
    """Store ``weight``, ``bias`` and the int64 buffer ``key`` of a layer keeping ``rank`` of
    ``size`` rows or columns, after checking that the indices are ``rank`` distinct values in range
    and the bias has ``bias_size`` entries."""
    idx = torch.as_tensor(index, dtype=torch.long, device=weight.device).clone()
    if idx.ndim != 1 or idx.numel() != layer.rank or bool(((idx < 0) | (idx >= size)).any()) \
            or idx.unique().numel() != idx.numel():
        raise ValueError(
            f"{key} must be {layer.rank} distinct indices in [0, {size}), one per kept {key[:-1]} of the "
            f"{tuple(weight.shape)} weight; got {idx.tolist()[:10]} ({idx.numel()} values)"
        )
    if bias is not None and tuple(bias.shape) != (bias_size,):
        raise ValueError(f"bias must have shape ({bias_size},), got {tuple(bias.shape)}")
    layer.weight = nn.Parameter(weight.detach().clone(memory_format=torch.contiguous_format))
    layer.bias = None if bias is None else nn.Parameter(bias.detach().clone())
    layer.register_buffer(key, idx)


class ScatteredLinear(_FactoredLinear):
    """Kept output rows of a linear layer, put back in place: ``y[rows] = W' x``, zeros elsewhere.

    A structured value-output unit (:class:`adapters.configs.StructuredConfig`) keeps ``rank``
    of the ``m`` output rows of ``v_proj`` (value dimensions of each KV head) and returns the
    full-width output, so the attention that reads it is unchanged: the dropped dimensions
    carry zeros (plus the bias, if any), which the :class:`GatheredLinear` after the attention
    never reads. A query-key unit keeps rows of ``q_proj`` and ``k_proj`` the same way (their
    dropped bias entries zeroed, so a dropped dimension adds nothing to a score). Stores
    ``weight`` (``rank x n``), the int64 buffer ``rows`` and the full ``bias``; ``rank n``
    weight parameters.
    """

    form = "scattered"
    core = "weight"

    def __init__(self, weight, /, *, rows, out_features: int, bias=None):
        super().__init__()
        self.rank, self.in_features = weight.shape
        self.out_features = int(out_features)
        _hold_kept(self, weight, bias, "rows", rows, self.out_features, bias_size=self.out_features)

    @staticmethod
    def _layout(m: int, n: int, rank: int, /) -> tuple[dict, dict]:
        if not 1 <= rank <= m:
            raise ValueError(f"a ScatteredLinear keeps 1 to {m} rows, got {rank}")
        return {"weight": (rank, n)}, {"rows": (rank,)}

    def forward(self, x):
        y = nn.functional.linear(x, self.weight)
        out = y.new_zeros(*y.shape[:-1], self.out_features).index_copy_(-1, self.rows, y)
        return out if self.bias is None else out + self.bias

    def weight_product(self) -> torch.Tensor:
        """The dense weight: the kept rows in place, zero rows elsewhere."""
        w = self.weight.new_zeros(self.out_features, self.in_features)
        return w.index_copy_(0, self.rows, self.weight)


class GatheredLinear(_FactoredLinear):
    """Kept input columns of a linear layer: ``y = W' x[cols] (+ b)``.

    The ``o_proj`` of a structured value-output unit reads only the kept value dimensions of
    each head (:class:`ScatteredLinear`), refitted. Stores ``weight`` (``m x rank``), the int64
    buffer ``cols`` and ``bias``; ``m rank`` weight parameters.
    """

    form = "gathered"
    core = "weight"

    def __init__(self, weight, /, *, cols, in_features: int, bias=None):
        super().__init__()
        self.out_features, self.rank = weight.shape
        self.in_features = int(in_features)
        _hold_kept(self, weight, bias, "cols", cols, self.in_features, bias_size=self.out_features)

    @staticmethod
    def _layout(m: int, n: int, rank: int, /) -> tuple[dict, dict]:
        if not 1 <= rank <= n:
            raise ValueError(f"a GatheredLinear keeps 1 to {n} columns, got {rank}")
        return {"weight": (m, rank)}, {"cols": (rank,)}

    def forward(self, x):
        return nn.functional.linear(x.index_select(-1, self.cols), self.weight, self.bias)

    def weight_product(self) -> torch.Tensor:
        """The dense weight: the kept columns in place, zero columns elsewhere."""
        w = self.weight.new_zeros(self.out_features, self.in_features)
        return w.index_copy_(1, self.cols, self.weight)


#: The layer types :func:`adapters.compress` builds whose core healing trains.
FACTORED_LINEARS = (CURLinear, InterpolativeLinear)
#: Every layer type a checkpoint holds (:mod:`adapters.hf_quantizer`) and :func:`fold` folds.
SAVED_LINEARS = (*FACTORED_LINEARS, LowRankLinear, ScatteredLinear, GatheredLinear)
#: Recorded form -> layer class (what a checkpoint's ``form`` field names).
LAYERS = {cls.form: cls for cls in SAVED_LINEARS}


def fold(model: nn.Module, /) -> int:
    """Replace each compressed layer by its ``to_linear()``; the number replaced.  The first step
    of :func:`adapters.merge` and ``model.dequantize()`` (:func:`adapters.merging.densify` then
    gives ``Conv1D`` slots and fused experts their own layout back)."""
    swaps = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, SAVED_LINEARS)]
    for name, mod in swaps:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, mod.to_linear())
    return len(swaps)
