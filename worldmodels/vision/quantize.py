"""Vector quantisation (van den Oord et al. 2017): a codebook learned by EMA, straight-through gradients,
k-means initialisation and restarts of dead codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.core import distributed


def nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the closest codebook row for each row of x: (N, D), (K, D) -> (N,)."""
    distances = x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.t() + codebook.pow(2).sum(1)
    return distances.argmin(1)


def kmeans(x: torch.Tensor, k: int, iterations: int = 10) -> torch.Tensor:
    """k centres of x (N, D) by Lloyd's algorithm, started from random rows (with repeats when N < k)."""
    pick = torch.randperm(len(x), device=x.device)[:k] if len(x) >= k else torch.randint(len(x), (k,), device=x.device)
    centres = x[pick].clone()
    for _ in range(iterations):
        codes = nearest(x, centres)
        counts = torch.bincount(codes, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, codes, x)
        filled = counts > 0  # an empty cluster keeps its centre
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


def code_statistics(codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity of the code histogram (the number of equally used codes it amounts to)
    and the fraction of codes used."""
    p = torch.bincount(codes.flatten(), minlength=k).float()
    p = p / p.sum().clamp(min=1)
    perplexity = torch.exp(-(p * p.clamp(min=1e-12).log()).sum())
    return perplexity, (p > 0).float().mean()


class VectorQuantizer(nn.Module):
    """Snap each input vector to its nearest of `num_embeddings` codes of size `embed_dim`.

    The codebook is not trained by gradients but by exponential moving averages of the vectors assigned
    to each code (van den Oord et al., appendix). A code no vector has picked for `dead_after` training
    steps is re-seeded with a random input vector of the current batch (0: never), and with
    `init = "kmeans"` the codebook starts as the k-means centres of the first training batch.
    """

    # buffers, registered in __init__
    embedding: torch.Tensor
    cluster_size: torch.Tensor
    embed_sum: torch.Tensor
    unused: torch.Tensor
    initialised: torch.Tensor

    def __init__(
        self,
        num_embeddings: int,
        embed_dim: int,
        commitment: float = 0.25,
        decay: float = 0.99,
        dead_after: int = 20,
        init: str = "kmeans",
        eps: float = 1e-5,
    ):
        super().__init__()
        self.num_embeddings, self.embed_dim = num_embeddings, embed_dim
        self.commitment, self.decay, self.dead_after, self.init, self.eps = commitment, decay, dead_after, init, eps
        embedding = torch.randn(num_embeddings, embed_dim)
        self.register_buffer("embedding", embedding)
        self.register_buffer("cluster_size", torch.ones(num_embeddings))
        self.register_buffer("embed_sum", embedding.clone())
        # training steps since last picked
        self.register_buffer("unused", torch.zeros(num_embeddings, dtype=torch.long))
        self.register_buffer("initialised", torch.tensor(init != "kmeans"))

    @torch.no_grad()
    def _update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        """EMA update of the codebook from one batch, then restart the codes that died."""
        onehot = F.one_hot(codes, self.num_embeddings).type(x.dtype)  # (N, K)
        counts = onehot.sum(0)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ x, alpha=1 - self.decay)
        # Laplace smoothing keeps a code whose count decayed to zero from dividing by zero
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.num_embeddings * self.eps) * n
        self.embedding.copy_(self.embed_sum / size[:, None])
        self.unused.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_after:
            dead = self.unused >= self.dead_after
            if dead.any():
                fresh = x[torch.randint(len(x), (int(dead.sum()),), device=x.device)]
                self.embedding[dead], self.embed_sum[dead] = fresh, fresh
                self.cluster_size[dead], self.unused[dead] = 1.0, 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """x (B, ..., D) -> quantised x with straight-through gradients, codes (B, ...), and the loss terms and usage.

        Under torchrun the codebook learns from the global batch (every process's x, in one process's order),
        so each process keeps the same codebook as a single process would.
        """
        # distances and averages in float32, even under bf16 autocast
        with torch.autocast(x.device.type, enabled=False):
            codes, quantised = self._assign(x)
        commitment = self.commitment * (x - quantised).pow(2).sum(-1).mean()  # the encoder commits to its code
        perplexity, usage = code_statistics(codes, self.num_embeddings)
        out = x + (quantised - x).detach()  # straight-through: the decoder's gradient flows to the encoder
        return out, codes.reshape(x.shape[:-1]), {"commitment": commitment, "perplexity": perplexity, "usage": usage}

    @torch.no_grad()
    def _assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (N,) and codebook vectors shaped as x; in training, first start and update the codebook."""
        flat = x.float().reshape(-1, self.embed_dim)
        if self.training:
            batch = (
                distributed.gather_batch(x.float()).reshape(-1, self.embed_dim)
                if distributed.rank_and_size()[1] > 1
                else flat
            )
            if not bool(self.initialised):
                centres = kmeans(batch, self.num_embeddings)
                self.embedding.copy_(centres)
                self.embed_sum.copy_(centres)
                self.cluster_size.fill_(1.0)
                self.initialised.fill_(True)
        codes = nearest(flat, self.embedding)
        quantised = self.embedding[codes].to(x.dtype).reshape(x.shape)  # a copy: the update below moves the codebook
        if self.training:
            self._update(batch, codes if batch is flat else nearest(batch, self.embedding))
        return codes, quantised

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """The codebook vectors of integer codes: (...,) -> (..., D)."""
        return self.embedding[codes]
