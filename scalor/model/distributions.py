"""Distributions of docs/model.md §2.3-§2.5: relaxed Bernoulli, analytic KLs, straight-through clamp.

Every sampler takes ``deterministic``: Gaussian samples become their mean and relaxed-Bernoulli
samples use u = 0.5 (y = logit / tau), the mode the reference fixtures and tracking inference use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-15
_LOG_2PI = math.log(2 * math.pi)


def clamp_st(x: Tensor, eps: float = EPS) -> Tensor:
    """Straight-through clamp to [eps, 1 - eps]: clamped forward, identity gradient. Any shape."""
    return x + (x.clamp(eps, 1 - eps) - x).detach()


def sample_normal(mean: Tensor, std: Tensor, deterministic: bool) -> Tensor:
    """Reparameterised N(mean, std) sample (the mean when deterministic). Any shape."""
    if deterministic:
        return mean
    return mean + std * torch.randn_like(mean)


def relaxed_bernoulli_logit(logit: Tensor, tau: float, deterministic: bool) -> Tensor:
    """A binary-concrete sample before its sigmoid: (logit + log u - log(1 - u)) / tau (logit / tau when
    deterministic). Any shape."""
    if deterministic:
        return logit / tau
    eps = torch.finfo(logit.dtype).eps
    u = torch.rand_like(logit).clamp(eps, 1 - eps)
    return (logit + u.log() - torch.log1p(-u)) / tau


def relaxed_bernoulli(logit: Tensor, tau: float, deterministic: bool) -> Tensor:
    """Binary-concrete sample z = sigmoid((logit + log u - log(1 - u)) / tau). Any shape."""
    return torch.sigmoid(relaxed_bernoulli_logit(logit, tau, deterministic))


def prob_to_logit(p: Tensor) -> Tensor:
    """log p - log(1 - p). Any shape."""
    return p.log() - torch.log1p(-p)


def kl_normal(q_mean: Tensor, q_std: Tensor, p_mean: Tensor, p_std: Tensor) -> Tensor:
    """Elementwise KL(N(q) || N(p)), the same formula as torch.distributions. Broadcasts."""
    var_ratio = (q_std / p_std).pow(2)
    t1 = ((q_mean - p_mean) / p_std).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())


def kl_bernoulli(logit: Tensor, p: Tensor | float, eps: float = EPS) -> Tensor:
    """Elementwise KL(Bernoulli(sigmoid(logit)) || Bernoulli(p)) with eps inside the logs."""
    q = torch.sigmoid(logit)
    p = torch.as_tensor(p, dtype=q.dtype, device=q.device)
    return q * ((q + eps).log() - (p + eps).log()) + (1 - q) * ((1 - q + eps).log() - (1 - p + eps).log())


def normal_log_prob(x: Tensor, mean: Tensor, std: Tensor | float) -> Tensor:
    """Elementwise log N(x; mean, std), constant included."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    return -((x - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * _LOG_2PI


def bernoulli_log_prob(z: Tensor, p: Tensor, eps: float = EPS) -> Tensor:
    """Elementwise z log p + (1 - z) log(1 - p) for binary z, eps inside the logs."""
    return z * (p + eps).log() + (1 - z) * (1 - p + eps).log()


def softplus(x: Tensor) -> Tensor:
    return F.softplus(x)
