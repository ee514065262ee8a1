"""GRAM's gradient regulating function (Li et al., ICCV 2023, arXiv 2303.06571, Sec. 3 "gradient regulating
function"; the inner-loop update ``theta' = theta - alpha * psi(grad)`` of their meta-objective).

The paper describes psi only as a *lightweight* function, meta-learned jointly with the prompt initialisation,
that turns raw fine-tuning gradients into a domain-generalisable direction by gating them. No official code
exists; the exact form below is this re-implementation's choice:

    g_hat = g / (mean(|g|) + eps)                       (per tuned tensor, scale-free features)
    psi(g) = g * 2 * sigmoid(w_0 * g_hat + w_1 * |g_hat| + w_2)

with three learned scalars ``w = (w_0, w_1, w_2)`` per tuned tensor. The gate lies in (0, 2): it can damp or
amplify each element depending on its sign and relative size (w_0, w_1) and rescale the whole tensor (w_2).
``w = 0`` is exactly the identity (``2 * sigmoid(0) == 1.0`` in floating point), so a GRAM learner with the
identity regulator trains bit-identically to its inner learner.
"""

from __future__ import annotations

import torch

#: regulator parameters per tuned tensor: (w_sign, w_magnitude, w_bias)
N_REGULATOR_PARAMS = 3
EPS = 1e-12


def identity_regulator(shape_names: list[str]) -> dict[str, torch.Tensor]:
    """Regulator parameters ``{name: [3]}`` (all zeros) that leave every gradient unchanged."""
    return {k: torch.zeros(N_REGULATOR_PARAMS) for k in shape_names}


def regulate(grad: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Regulated gradient ``psi(g)``, same shape as ``grad`` (any shape); ``weights`` is ``[3]``.

    Differentiable in both arguments (the meta-gradient flows into ``weights`` and, second order, through ``g``).
    """
    if weights.shape != (N_REGULATOR_PARAMS,):
        raise ValueError(f"regulator weights have shape {tuple(weights.shape)}, expected ({N_REGULATOR_PARAMS},)")
    w = weights.to(device=grad.device, dtype=grad.dtype)
    g_hat = grad / (grad.abs().mean() + EPS)
    gate = 2.0 * torch.sigmoid(w[0] * g_hat + w[1] * g_hat.abs() + w[2])
    return grad * gate
