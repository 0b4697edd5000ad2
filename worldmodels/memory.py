"""M: the MDN-RNN. An LSTM over [z_t, a_t] predicting z_{t+1}, a reward and a done.

z_{t+1} is a Gaussian mixture per latent dimension for a continuous V, and a categorical distribution over
the codebook per grid position for a discrete V (VQ-VAE).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.config import MemoryConfig
from worldmodels.core import distributed
from worldmodels.core.errors import WorldModelsError

State = tuple[torch.Tensor, torch.Tensor]  # LSTM (h, c), each (1, B, H)


SIGMA_MIN = 1e-3  # keeps every sigma away from zero so the likelihood stays finite
OUTCOME_HIDDEN = 64  # width of the small MLP that reads [h_{t+1}, z_{t+1}] when reward_from = "next"
# the fields of the recipe's [memory] that shape M, stored with it; the others (epochs, lr, ...) only train it
SHAPING = (
    "hidden_size",
    "num_gaussians",
    "done_weight",
    "sample_latents",
    "dropout",
    "reward_from",
    "cell_to_controller",
)
SIZES = ("latent_dim", "action_dim", "positions", "num_codes")  # what M takes from V and the world, not the recipe


@dataclass
class Prediction:
    """M's output for one or more time steps: the mixture's parameters or the code logits, reward and done."""

    logit_pi: torch.Tensor | None  # (..., Z, K) mixture logits, one mixture per latent dimension
    mu: torch.Tensor | None  # (..., Z, K)
    sigma: torch.Tensor | None  # (..., Z, K)
    reward: torch.Tensor  # (...)
    done_logit: torch.Tensor  # (...)
    code_logits: torch.Tensor | None = None  # (..., P, num_codes), discrete V

    def map(self, fn) -> "Prediction":
        """The prediction with `fn` applied to every tensor it holds."""
        values: list[Any] = [None if t is None else fn(t) for t in vars(self).values()]
        return Prediction(*values)


def _as_used(cfg: MemoryConfig, positions: int) -> MemoryConfig:
    """The [memory] section as M uses it: a discrete V's codes (positions > 0) have no posterior spread to sample."""
    return dataclasses.replace(cfg, sample_latents=cfg.sample_latents and not positions)


def stored_config(cfg: MemoryConfig, latent_dim: int, action_dim: int, positions: int = 0, num_codes: int = 0) -> dict:
    """What the checkpoint of M built from `cfg` and these sizes stores: the sizes and the [memory] fields that shape
    M (`SHAPING`); a stored config is checked against the recipe's by every stage that reads M."""
    used = _as_used(cfg, positions)
    sizes = {"latent_dim": latent_dim, "action_dim": action_dim, "positions": positions, "num_codes": num_codes}
    shaping = {k: getattr(used, k) for k in SHAPING}
    return {**sizes, **shaping, "sigma_min": SIGMA_MIN, "outcome_hidden": OUTCOME_HIDDEN}


def read_stored(stored: dict, name: object = "M's checkpoint") -> tuple[MemoryConfig, dict]:
    """The [memory] section and the sizes a stored config was made from (a field it predates: the default)."""
    unknown = set(stored) - {*SHAPING, *SIZES, "sigma_min", "outcome_hidden"}
    if unknown:
        raise WorldModelsError(f"'{name}' is not a checkpoint of M (fields {sorted(unknown)}); retrain memory")
    return MemoryConfig(**{k: stored[k] for k in SHAPING if k in stored}), {k: stored[k] for k in SIZES if k in stored}


class MDNRNN(nn.Module):
    """Mixture-density LSTM; `forward` runs whole sequences, `step` one time step."""

    codebook: torch.Tensor  # buffer (num_codes, code size), registered only for a categorical head

    def __init__(self, cfg: MemoryConfig, latent_dim: int, action_dim: int, positions: int = 0, num_codes: int = 0):
        """M as the recipe's [memory] says, on V's z (`latent_dim`; a discrete V: `positions` x `num_codes` codes)
        and the world's actions (`action_dim`)."""
        super().__init__()
        self.categorical = positions > 0
        self.cfg = _as_used(cfg, positions)
        self.latent_dim, self.action_dim, self.positions, self.num_codes = latent_dim, action_dim, positions, num_codes
        z, k = latent_dim, cfg.num_gaussians
        self.lstm = nn.LSTM(z + action_dim, cfg.hidden_size, batch_first=True)
        outputs = positions * num_codes if self.categorical else 3 * z * k
        self.from_next = cfg.reward_from == "next"
        self.head = nn.Linear(cfg.hidden_size, outputs + (0 if self.from_next else 2))
        if self.from_next:  # reward and done of the z_{t+1} actually drawn, so a dream's reward agrees with its frame
            self.outcome = nn.Sequential(
                nn.Linear(cfg.hidden_size + z, OUTCOME_HIDDEN), nn.ELU(), nn.Linear(OUTCOME_HIDDEN, 2)
            )
        if self.categorical:  # V's codebook, copied when M is trained: M then dreams z without V
            self.register_buffer("codebook", torch.zeros(num_codes, z // positions))

    def stored_config(self) -> dict:
        """What M's checkpoint stores to rebuild it without the recipe (`from_stored`)."""
        return stored_config(self.cfg, self.latent_dim, self.action_dim, self.positions, self.num_codes)

    @classmethod
    def from_stored(cls, stored: dict, name: object = "M's checkpoint") -> MDNRNN:
        """M rebuilt from `stored_config()` (a field the checkpoint predates takes the recipe's default)."""
        cfg, sizes = read_stored(stored, name)
        return cls(cfg, **sizes)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        zeros = torch.zeros(1, batch, self.cfg.hidden_size, device=device)
        return zeros, zeros.clone()

    def _predict(self, out: torch.Tensor, keep: torch.Tensor | None = None) -> Prediction:
        z, k = self.latent_dim, self.cfg.num_gaussians
        if keep is not None:  # a given dropout mask (the dream's, drawn from its counter-based noise)
            out = out * keep / (1 - self.cfg.dropout)
        elif self.training and self.cfg.dropout:
            out = F.dropout(out, self.cfg.dropout)
        params = self.head(out)
        if self.from_next:  # filled in by `complete` once z_{t+1} is known
            unknown = out.new_full(out.shape[:-1], math.nan)
            mixture, reward, done = params, unknown, unknown.clone()
        else:
            mixture, reward, done = params[..., :-2], params[..., -2], params[..., -1]
        if self.categorical:
            logits = mixture.reshape(*out.shape[:-1], self.positions, self.num_codes)
            return Prediction(None, None, None, reward, done, logits)
        logit_pi, mu, raw_sigma = mixture.reshape(*out.shape[:-1], z, 3 * k).split(k, dim=-1)
        sigma = F.softplus(raw_sigma.contiguous()) + SIGMA_MIN  # contiguous: 10x faster, the same values
        return Prediction(logit_pi, mu, sigma, reward, done)

    def forward(
        self,
        z: torch.Tensor,
        action: torch.Tensor,
        state: State | None = None,
        keep: torch.Tensor | None = None,
        next_z: torch.Tensor | None = None,
    ) -> tuple[Prediction, State]:
        """z (B, T, Z), action (B, T, A) -> prediction for z_{t+1} at every t, final LSTM state; `keep` (B, T, H) a 0/1
        dropout mask for the head; `next_z` (B, T, Z) the z_{t+1} that the reward and done are read from
        (reward_from = "next")."""
        out, state = self.lstm(torch.cat([z, action], dim=-1), state)  # (B, T, H)
        prediction = self._predict(out, keep)
        return (prediction if next_z is None else self.complete(prediction, out, next_z)), state

    def complete(self, prediction: Prediction, h: torch.Tensor, next_z: torch.Tensor) -> Prediction:
        """The prediction with its reward and done read from [h_{t+1}, z_{t+1}] when reward_from = "next";
        unchanged otherwise."""
        if not self.from_next:
            return prediction
        outcome = self.outcome(torch.cat([h, next_z.to(h.dtype)], dim=-1))
        prediction.reward, prediction.done_logit = outcome[..., 0], outcome[..., 1]
        return prediction

    def step(
        self, z: torch.Tensor, action: torch.Tensor, state: State, keep: torch.Tensor | None = None
    ) -> tuple[Prediction, State]:
        """One time step for acting and dreaming: z (B, Z), action (B, A), `keep` (B, H).

        The LSTM's own cell, not `nn.LSTM` over a sequence of one: 5x faster at batch 1, as fast at 1024.
        """
        weights = self.lstm.all_weights[0]  # w_ih, w_hh, b_ih, b_hh of its one layer
        h, c = torch.lstm_cell(torch.cat([z, action], dim=-1), (state[0][0], state[1][0]), *weights)
        return self._predict(h, keep), (h[None], c[None])

    @staticmethod
    def hidden(state: State) -> torch.Tensor:
        """The LSTM's h: (B, H)."""
        return state[0][0]

    @property
    def readout_size(self) -> int:
        """How much of M's state C reads: H, or 2H with the cell state."""
        return self.cfg.hidden_size * (2 if self.cfg.cell_to_controller else 1)

    def readout(self, state: State) -> torch.Tensor:
        """What C reads of M's state: h (B, H), or [h, c] (B, 2H) with `cell_to_controller`."""
        h = self.hidden(state)
        return torch.cat([h, state[1][0]], dim=-1) if self.cfg.cell_to_controller else h

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (..., P) -> z (..., P x code size), through the stored codebook."""
        return self.codebook[codes].flatten(-2)

    def draw(self, prediction: Prediction, tau: float, uniform: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
        """z_{t+1} at temperature tau from (..., Z) uniforms and normals: `draw`, or `draw_codes` then the codebook."""
        if self.categorical:
            assert prediction.code_logits is not None
            return self.embed(draw_codes(prediction.code_logits, tau, uniform[..., : self.positions]))
        return draw(prediction, tau, uniform, normal)

    def done_probability(self, prediction: Prediction) -> torch.Tensor:
        """P(done): the done head trained with positives weighted w predicts odds w times too high."""
        return torch.sigmoid(prediction.done_logit - math.log(self.cfg.done_weight))


def mixture_mean(prediction: Prediction) -> torch.Tensor:
    """The expected next z of a continuous M's mixtures: (..., Z)."""
    assert prediction.logit_pi is not None and prediction.mu is not None  # a continuous V's M
    return (prediction.logit_pi.softmax(-1) * prediction.mu).sum(-1)


def mixture_log_prob(prediction: Prediction, target: torch.Tensor) -> torch.Tensor:
    """log p(target) under the per-dimension mixtures, summed over dimensions: (..., Z) -> (...)."""
    assert prediction.logit_pi is not None and prediction.mu is not None and prediction.sigma is not None
    log_pi = F.log_softmax(prediction.logit_pi, dim=-1)
    x = target.unsqueeze(-1)
    log_normal = (
        -0.5 * ((x - prediction.mu) / prediction.sigma) ** 2 - prediction.sigma.log() - 0.5 * math.log(2 * math.pi)
    )
    return torch.logsumexp(log_pi + log_normal, dim=-1).sum(-1)


def draw(prediction: Prediction, tau: float, uniform: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """z_{t+1} at temperature tau from given noise: (..., Z) uniforms pick components, (..., Z) normals spread them.

    Logits are divided by tau and sigmas multiplied by sqrt(tau); tau = 0 gives the most likely component's mean.
    """
    assert prediction.logit_pi is not None and prediction.mu is not None and prediction.sigma is not None
    if tau <= 0:
        best = prediction.logit_pi.argmax(-1, keepdim=True)
        return prediction.mu.gather(-1, best).squeeze(-1)
    # the K components on the second-to-last axis: torch's softmax over a last axis of 5 is 7x slower
    cdf = F.softmax((prediction.logit_pi / tau).transpose(-1, -2).contiguous(), dim=-2).cumsum(-2)
    k = prediction.logit_pi.shape[-1]
    component = (uniform.unsqueeze(-2) > cdf).sum(-2).unsqueeze(-1).clamp(max=k - 1)  # inverse-CDF sampling
    mu = prediction.mu.gather(-1, component).squeeze(-1)
    sigma = prediction.sigma.gather(-1, component).squeeze(-1)
    return mu + sigma * math.sqrt(tau) * normal


def draw_codes(logits: torch.Tensor, tau: float, uniform: torch.Tensor) -> torch.Tensor:
    """A code per position from logits (..., P, K) at temperature tau, by inverse CDF of (..., P) uniforms;
    tau = 0: argmax."""
    if tau <= 0:
        return logits.argmax(-1)
    cdf = F.softmax(logits / tau, dim=-1).cumsum(-1)
    return (uniform.unsqueeze(-1) > cdf).sum(-1).clamp(max=logits.shape[-1] - 1)


def sample(prediction: Prediction, tau: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw z_{t+1} at temperature tau with torch's generator (see `draw`)."""
    assert prediction.mu is not None
    shape, device = prediction.mu.shape[:-1], prediction.mu.device
    uniform = torch.rand(shape, generator=generator, device=device)
    normal = torch.randn(shape, generator=generator, device=device)
    return draw(prediction, tau, uniform, normal)


def memory_loss(
    prediction: Prediction,
    next_z: torch.Tensor,
    reward: torch.Tensor,
    done: torch.Tensor,
    mask: torch.Tensor,
    done_weight: float = 10.0,
    reward_weight: float = 1.0,
    done_loss_weight: float = 1.0,
    next_codes: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Masked mean of: NLL of z_{t+1} (per latent dimension, or per position of `next_codes` for a categorical
    head), reward MSE, done BCE with positives up-weighted.

    Under torchrun the mean is over the global batch's steps: a process divides its sum by the processes'
    mean step count, so DDP's averaging of gradients gives the global mean, however the padding fell.
    """
    steps = distributed.process_mean(mask.sum()).clamp(min=1)
    if prediction.code_logits is not None:
        logits = prediction.code_logits
        assert next_codes is not None
        ce = F.cross_entropy(logits.flatten(0, -2), next_codes.flatten().long(), reduction="none").view(
            next_codes.shape
        )
        nll = (ce.mean(-1) * mask).sum() / steps
    else:
        nll = -(mixture_log_prob(prediction, next_z) * mask).sum() / (steps * next_z.shape[-1])
    reward_loss = ((prediction.reward - reward) ** 2 * mask).sum() / steps
    pos_weight = torch.tensor(done_weight, device=done.device)
    done_loss = (
        F.binary_cross_entropy_with_logits(prediction.done_logit, done, pos_weight=pos_weight, reduction="none") * mask
    ).sum() / steps
    loss = nll + reward_weight * reward_loss + done_loss_weight * done_loss
    return {"loss": loss, "nll": nll, "reward": reward_loss, "done": done_loss}
