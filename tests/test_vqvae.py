"""The VQ-VAE and its categorical M: nearest codes, EMA codebook, dead codes, k-means, straight-through,
code draws, and the tiny recipe end to end with vision.model = "vqvae"."""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import pytest
import torch
from helpers import TINY, cli_stage

from worldmodels import config as config_lib
from worldmodels.agent import load_memory, load_vision
from worldmodels.config import DreamConfig, MemoryConfig
from worldmodels.data.latents import SequenceDataset, load_latents, start_latents
from worldmodels.memory import MDNRNN, Prediction, draw_codes, memory_loss
from worldmodels.runs import checkpoints
from worldmodels.vision import VQVAE, build_vision
from worldmodels.vision.quantize import VectorQuantizer, code_statistics, kmeans, nearest
from worldmodels.worlds.dream import Dream


def brute_nearest(x: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """argmin_k ||x_i - c_k||^2 with explicit loops."""
    out = np.zeros(len(x), dtype=np.int64)
    for i, row in enumerate(x):
        distances = [sum((a - b) ** 2 for a, b in zip(row, code)) for code in codebook]
        out[i] = int(np.argmin(distances))
    return out


def ema_step(state: dict, x: np.ndarray, decay: float, eps: float) -> tuple[dict, np.ndarray]:
    """One EMA codebook update by hand (float64): the codes of x under the old codebook, then the new buffers."""
    emb, size, total = state["embedding"], state["cluster_size"], state["embed_sum"]
    k = len(emb)
    codes = brute_nearest(x, emb)
    counts = np.array([(codes == j).sum() for j in range(k)], dtype=np.float64)
    sums = np.stack([x[codes == j].sum(0) if counts[j] else np.zeros(x.shape[1]) for j in range(k)])
    size = decay * size + (1 - decay) * counts
    total = decay * total + (1 - decay) * sums
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n  # Laplace smoothing
    unused = np.where(counts > 0, 0, state["unused"] + 1)
    return {"embedding": total / smoothed[:, None], "cluster_size": size, "embed_sum": total, "unused": unused}, codes


def buffers(vq: VectorQuantizer) -> dict:
    return {
        name: getattr(vq, name).double().numpy().copy() for name in ("embedding", "cluster_size", "embed_sum", "unused")
    }


def set_codebook(vq: VectorQuantizer, embedding, cluster_size) -> None:
    """Put the quantiser in a known state: embed_sum = embedding x cluster_size."""
    embedding = torch.as_tensor(embedding, dtype=torch.float32)
    cluster_size = torch.as_tensor(cluster_size, dtype=torch.float32)
    vq.embedding.copy_(embedding)
    vq.cluster_size.copy_(cluster_size)
    vq.embed_sum.copy_(embedding * cluster_size[:, None])


# ---------------------------------------------------------------- nearest, statistics, k-means


def test_nearest_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x, codebook = torch.randn(300, 5, generator=g), torch.randn(17, 5, generator=g)
    got = nearest(x, codebook)
    assert got.shape == (300,) and got.dtype == torch.long
    expected = brute_nearest(x.double().numpy(), codebook.double().numpy())
    d = torch.cdist(x.double(), codebook.double())
    # equal, except where two codes are equally near to float32 precision
    ties = (d.gather(1, got[:, None]) - d.min(1, keepdim=True).values).squeeze(1) > 1e-5
    assert not ties.any()
    np.testing.assert_array_equal(got.numpy(), expected)
    assert len(np.unique(expected)) > 10  # many codes are somebody's nearest
    # a codebook row is its own nearest code
    np.testing.assert_array_equal(nearest(codebook, codebook).numpy(), np.arange(17))


@pytest.mark.parametrize("used, k", [(1, 8), (3, 8), (8, 8), (5, 64)])
def test_code_statistics_uniform_histogram(used, k):
    codes = torch.arange(used).repeat(7)[torch.randperm(7 * used)].reshape(7, used)  # any shape: flattened
    perplexity, usage = code_statistics(codes, k)
    assert perplexity.item() == pytest.approx(used, rel=1e-5)
    assert usage.item() == pytest.approx(used / k)


def test_code_statistics_skewed_histogram():
    codes = torch.tensor([0, 0, 1, 2] * 5)  # p = (1/2, 1/4, 1/4, 0, ...)
    perplexity, usage = code_statistics(codes, 10)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert perplexity.item() == pytest.approx(math.exp(entropy), rel=1e-5)  # 2^1.5
    assert usage.item() == pytest.approx(0.3)


def lloyd_by_hand(x: np.ndarray, centres: np.ndarray, iterations: int) -> np.ndarray:
    centres = centres.copy()
    for _ in range(iterations):
        codes = brute_nearest(x, centres)
        for j in range(len(centres)):
            if (codes == j).any():  # an empty cluster keeps its centre
                centres[j] = x[codes == j].mean(0)
    return centres


@pytest.mark.parametrize("iterations", [1, 3])
def test_kmeans_is_lloyd_from_random_rows(iterations):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(5)
    start = x[torch.randperm(60)[:6]].numpy()  # the rows kmeans starts from with the same global seed
    torch.manual_seed(5)
    got = kmeans(x, 6, iterations=iterations)
    assert got.shape == (6, 3)
    np.testing.assert_allclose(got.numpy(), lloyd_by_hand(x.numpy(), start, iterations), rtol=1e-10, atol=1e-12)
    assert not np.allclose(got.numpy(), start)  # it moved


def test_kmeans_finds_two_well_separated_blobs():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(40, 2, generator=g, dtype=torch.float64) * 0.3 + torch.tensor([-10.0, 4.0], dtype=torch.float64)
    b = torch.randn(25, 2, generator=g, dtype=torch.float64) * 0.3 + torch.tensor([8.0, -3.0], dtype=torch.float64)
    x = torch.cat([a, b])
    for seed in range(10):  # whichever rows it starts from
        torch.manual_seed(seed)
        centres = kmeans(x, 2)
        order = centres[:, 0].argsort()
        torch.testing.assert_close(centres[order], torch.stack([a.mean(0), b.mean(0)]), rtol=0, atol=1e-12)


def test_kmeans_with_few_rows_returns_rows():
    x = torch.tensor([[0.0, 1.0], [5.0, 5.0], [-3.0, 2.0]])
    torch.manual_seed(0)
    same = kmeans(x, 3)  # as many rows as centres: each row is a centre
    assert sorted(map(tuple, same.tolist())) == sorted(map(tuple, x.tolist()))
    many = kmeans(x, 8)  # fewer rows than centres: repeats, every centre still a row
    assert many.shape == (8, 2)
    assert all(any(torch.equal(c, row) for row in x) for c in many)


# ---------------------------------------------------------------- the quantiser


def test_straight_through_gradient_and_commitment():
    g = torch.Generator().manual_seed(3)
    vq = VectorQuantizer(6, 3, commitment=0.4, decay=0.9, dead_after=0, init="random").eval()
    set_codebook(vq, torch.randn(6, 3, generator=g), torch.ones(6))
    x = torch.randn(10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    out, codes, stats = vq(x)
    quantised = vq.embedding.double()[codes]
    torch.testing.assert_close(out.detach(), quantised)  # the forward value is the code's vector
    np.testing.assert_array_equal(codes.numpy(), brute_nearest(x.detach().numpy(), vq.embedding.double().numpy()))
    expected = 0.4 * ((x.detach() - quantised) ** 2).sum(1).mean()
    assert stats["commitment"].item() == pytest.approx(expected.item(), rel=1e-12)

    w = torch.randn(10, 3, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * w).sum(), x)
    torch.testing.assert_close(grad, w, rtol=0, atol=0)  # d out / d x = identity
    (grad,) = torch.autograd.grad(stats["commitment"], x)
    torch.testing.assert_close(grad, 2 * 0.4 * (x.detach() - quantised) / 10)  # pulls x towards its code
    assert not any(p.requires_grad for p in vq.buffers())  # the codebook learns by EMA, not by gradient


def test_ema_update_matches_hand_computation():
    decay, eps = 0.8, 1e-5
    vq = VectorQuantizer(4, 2, decay=decay, dead_after=0, init="random", eps=eps).train()
    # code 3 is far from every row and its count has nearly decayed away: Laplace smoothing visibly moves it
    set_codebook(vq, [[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [9.0, 9.0]], [2.0, 1.0, 3.0, 1e-3])
    state = buffers(vq)
    x = np.array([[0.5, -0.2], [-0.3, 0.1], [3.5, 0.4], [4.4, -0.1], [0.2, 0.3], [1.0, 3.0]])
    for _ in range(3):
        out, codes, _ = vq(torch.tensor(x, dtype=torch.float32))
        # the code before the update
        np.testing.assert_allclose(out.numpy(), state["embedding"][codes.numpy()], rtol=1e-6)
        state, expected_codes = ema_step(state, x, decay, eps)
        np.testing.assert_array_equal(codes.numpy(), expected_codes)
        for name, value in buffers(vq).items():
            np.testing.assert_allclose(value, state[name], rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(state["unused"], [0, 0, 0, 3])
    assert 0.05 < 9 - state["embedding"][3, 0] < 1  # without smoothing it would have stayed at 9
    assert np.abs(state["embedding"][0] - [0.1333, 0.0667]).max() < 0.2  # code 0 moved towards its rows' mean

    vq.eval()  # eval mode reads the codebook but never moves it
    before = buffers(vq)
    vq(torch.randn(20, 2) * 5)
    for name, value in buffers(vq).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)

    vq.train()  # a count decayed to exactly zero does not divide by zero
    vq.cluster_size[3], vq.embed_sum[3] = 0.0, 0.0
    vq(torch.tensor(x[:2], dtype=torch.float32))
    assert torch.isfinite(vq.embedding).all()


def dead_code_quantiser(dead_after: int) -> tuple[VectorQuantizer, torch.Tensor]:
    """Codes 0 and 1 sit on two blobs of the batch; code 2 is far from every row, so nobody picks it."""
    g = torch.Generator().manual_seed(4)
    vq = VectorQuantizer(3, 2, decay=0.9, dead_after=dead_after, init="random").train()
    set_codebook(vq, [[0.0, 0.0], [5.0, 5.0], [100.0, 100.0]], torch.ones(3))
    x = torch.cat([torch.randn(8, 2, generator=g) * 0.2, torch.randn(8, 2, generator=g) * 0.2 + 5.0])
    return vq, x


def test_dead_code_restarts_from_a_batch_row_after_dead_after_steps():
    vq, x = dead_code_quantiser(dead_after=3)
    for step in (1, 2):
        _, codes, _ = vq(x)
        assert set(codes.tolist()) == {0, 1}
        assert vq.unused.tolist() == [0, 0, step]
        assert vq.embedding[2].norm() > 50  # still far away: not yet dead
    vq(x)  # third step unused: restarted
    row = vq.embedding[2]
    assert any(torch.equal(row, r) for r in x), row  # exactly one of the batch's rows
    torch.testing.assert_close(vq.embed_sum[2], row)
    assert vq.cluster_size[2].item() == 1.0 and vq.unused[2].item() == 0
    _, codes, stats = vq(x)  # and it is back in use
    assert 2 in codes.tolist() and stats["usage"].item() == 1.0


def test_dead_code_never_restarts_with_dead_after_zero():
    vq, x = dead_code_quantiser(dead_after=0)
    for _ in range(12):
        _, codes, stats = vq(x)
        assert 2 not in codes.tolist()
    assert vq.unused[2].item() == 12 and vq.embedding[2].norm() > 50
    assert stats["usage"].item() == pytest.approx(2 / 3)


def test_kmeans_init_on_first_training_batch():
    decay, eps = 0.95, 1e-5
    g = torch.Generator().manual_seed(6)
    blobs = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]])
    x = blobs.repeat_interleave(10, 0) + 0.1 * torch.randn(30, 2, generator=g)
    vq = VectorQuantizer(3, 2, decay=decay, dead_after=1000, init="kmeans", eps=eps)
    assert not bool(vq.initialised)
    vq.eval()(x)
    assert not bool(vq.initialised)  # no initialisation outside training

    torch.manual_seed(11)
    centres = kmeans(x, 3)
    torch.manual_seed(11)  # the same rows to start from
    vq.train()(x)
    assert bool(vq.initialised)
    state = {
        "embedding": centres.double().numpy(),
        "cluster_size": np.ones(3),
        "embed_sum": centres.double().numpy(),
        "unused": np.zeros(3),
    }
    state, _ = ema_step(state, x.double().numpy(), decay, eps)
    np.testing.assert_allclose(vq.embedding.numpy(), state["embedding"], rtol=1e-5, atol=1e-5)
    # and the second batch is an EMA step, not a second initialisation
    x2 = x + 0.5
    vq(x2)
    state, _ = ema_step(state, x2.double().numpy(), decay, eps)
    np.testing.assert_allclose(vq.embedding.numpy(), state["embedding"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the conv VQ-VAE


def small_vqvae(frame_size: int, seed: int = 0, **overrides) -> VQVAE:
    torch.manual_seed(seed)
    stored = {"model": "vqvae", "frame_size": frame_size, "channels": [4, 8, 8, 8], "embed_dim": 3, "num_embeddings": 8}
    return cast(VQVAE, build_vision(stored | overrides))


def frames(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random pictures in [0, 1]: a few coloured gradients."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    a, b, c = (torch.rand(n, 3, 1, 1, generator=g) for _ in range(3))
    return (a * ramp[None, None, :, None] + b * ramp[None, None, None, :] + c).clamp(0, 1) / 1.5


@pytest.mark.parametrize("frame_size", [16, 32])
def test_vqvae_encode_and_decode_match_brute_force(frame_size):
    model = small_vqvae(frame_size)
    model.train()
    model.encode(frames(16, frame_size, seed=2))  # the first training batch: k-means centres of the encoder's outputs
    model.eval()
    x = frames(6, frame_size)
    grid, d = frame_size // 16, 3
    assert (model.positions, model.latent_dim, model.latent_kind) == (grid * grid, grid * grid * d, "discrete")
    with torch.no_grad():
        latent = model.encode(x)
        h = model.encoder(x)  # (B, D, g, g)
    assert latent.mean.shape == (6, grid * grid * d) and latent.codes.shape == (6, grid * grid)
    assert latent.logstd is None
    codebook = model.codebook.double().numpy()
    for b in range(6):  # position p = row i, column j of the grid: i * g + j
        for i in range(grid):
            for j in range(grid):
                p = i * grid + j
                distances = ((h[b, :, i, j].double().numpy() - codebook) ** 2).sum(1)
                code = latent.codes[b, p].item()
                assert distances[code] <= distances.min() + 1e-6  # the nearest code (up to float32 ties)
                # the straight-through value x + (q - x) is q up to float32 rounding
                np.testing.assert_allclose(
                    latent.mean[b, p * d : (p + 1) * d].numpy(), model.codebook[code].numpy(), rtol=0, atol=1e-6
                )
    assert len(latent.codes.unique()) > 1
    torch.testing.assert_close(model.embed(latent.codes), latent.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(latent.sample(), latent.mean, rtol=0, atol=0)  # no spread

    with torch.no_grad():
        out = model.decode(latent.mean)
        by_hand = torch.zeros(6, d, grid, grid)
        for p in range(grid * grid):
            by_hand[:, :, p // grid, p % grid] = latent.mean[:, p * d : (p + 1) * d]
        expected = model.decoder(by_hand).clamp(0, 1)  # the decoder is linear; decode clamps
    assert out.shape == (6, 3, frame_size, frame_size) and (out >= 0).all() and (out <= 1).all()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_vqvae_loss_terms_and_training_lowers_loss():
    model = small_vqvae(16, num_embeddings=16, embed_dim=4, commitment=0.25).train()
    x = frames(16, 16, seed=1)
    first = model.loss(x)
    assert set(first) >= {"loss", "recon", "commitment", "perplexity", "usage"}
    assert first["loss"].item() == pytest.approx(first["recon"].item() + first["commitment"].item(), rel=1e-6)
    assert 1.0 <= first["perplexity"].item() <= 16.0 and 0 < first["usage"].item() <= 1.0
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        losses = model.loss(x)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())  # straight-through
    assert model.loss(x)["loss"].item() < 0.7 * first["loss"].item()
    model.eval()
    with torch.no_grad():
        latent = model.encode(x)
        recon = (model.decode(latent.mean) - x).pow(2).flatten(1).sum(1).mean().item()
    mean_frame = (x - x.mean(0)).pow(2).flatten(1).sum(1).mean().item()
    assert recon < 0.95 * mean_frame  # better than any single picture: the codes carry information about the frame
    assert len(latent.codes.unique()) > 2


def test_vqvae_sample_draws_codes_by_usage():
    model = small_vqvae(16, num_embeddings=4, embed_dim=2)  # one position: a frame is one code
    model.quantizer.embedding.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    model.decode = lambda z: z  # see the latents that would be decoded
    model.quantizer.cluster_size.copy_(torch.tensor([1.0, 2.0, 3.0, 0.0]))
    torch.manual_seed(0)
    n = 6000
    codes = nearest(model.sample(n), model.codebook)
    freq = torch.bincount(codes, minlength=4).double() / n
    torch.testing.assert_close(freq, torch.tensor([1, 2, 3, 0], dtype=torch.float64) / 6, rtol=0, atol=0.025)
    freq = torch.bincount(nearest(model.sample(n, temperature=0.5), model.codebook), minlength=4).double() / n
    torch.testing.assert_close(freq, torch.tensor([1, 4, 9, 0], dtype=torch.float64) / 14, rtol=0, atol=0.025)
    assert (nearest(model.sample(50, temperature=0.1), model.codebook) == 2).all()  # 3^10 : 2^10: nearly the argmax

    model = small_vqvae(32)  # real decodes: (n, 3, H, W) in [0, 1]
    pictures = model.sample(5)
    assert pictures.shape == (5, 3, 32, 32) and (pictures >= 0).all() and (pictures <= 1).all()


def test_vqvae_sample_at_low_temperature_is_the_most_used_code():
    model = small_vqvae(16, num_embeddings=4, embed_dim=2)
    model.quantizer.embedding.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    model.decode = lambda z: z
    # small EMA counts, as after a short training
    model.quantizer.cluster_size.copy_(torch.tensor([1.0, 2.0, 3.0, 0.0]))
    torch.manual_seed(0)
    codes = nearest(model.sample(50, temperature=0.01), model.codebook)  # temperatures down to 1e-3 are accepted
    assert (codes == 2).all()


def test_build_vision_vqvae_from_config():
    config = {
        "model": "vqvae",
        "frame_size": 32,
        "channels": [4, 8, 8, 8],
        "embed_dim": 2,
        "num_embeddings": 5,
        "commitment": 0.1,
        "ema_decay": 0.5,
        "dead_after": 7,
        "codebook_init": "random",
    }
    model = build_vision(config)
    assert isinstance(model, VQVAE) and model.latent_dim == 8 and model.codebook.shape == (5, 2)
    q = model.quantizer
    assert (q.commitment, q.decay, q.dead_after, q.init, bool(q.initialised)) == (0.1, 0.5, 7, "random", True)


# ---------------------------------------------------------------- categorical M


def test_categorical_memory_loss_is_masked_mean_cross_entropy():
    B, T, P, K = 3, 5, 4, 6
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(B, T, P, K, generator=g, dtype=torch.float64) * 2
    pred = Prediction(
        None,
        None,
        None,
        torch.randn(B, T, generator=g, dtype=torch.float64),
        torch.randn(B, T, generator=g, dtype=torch.float64),
        logits,
    )
    codes = torch.randint(K, (B, T, P), generator=g)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[0, 2:] = 0
    mask[2, 4:] = 0
    reward, done = torch.randn(B, T, dtype=torch.float64), torch.zeros(B, T, dtype=torch.float64)
    next_z = torch.full((B, T, 8), float("nan"))  # a categorical head never reads z
    out = memory_loss(pred, next_z, reward, done, mask, next_codes=codes.to(torch.int16))

    lg = logits.numpy()
    total, steps = 0.0, 0
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                steps += 1
                for p in range(P):
                    log_norm = math.log(sum(math.exp(v) for v in lg[b, t, p]))
                    total += (log_norm - lg[b, t, p, codes[b, t, p]]) / P
    assert out["nll"].item() == pytest.approx(total / steps, rel=1e-10)
    assert out["loss"].item() == pytest.approx((out["nll"] + out["reward"] + out["done"]).item(), rel=1e-12)

    changed = logits.clone()
    changed[0, 3] += 5 * torch.randn(P, K, dtype=torch.float64)  # masked step
    codes2 = codes.clone()
    codes2[2, 4] = (codes2[2, 4] + 1) % K
    out2 = memory_loss(
        Prediction(None, None, None, pred.reward, pred.done_logit, changed),
        next_z,
        reward,
        done,
        mask,
        next_codes=codes2,
    )
    assert out2["nll"].item() == pytest.approx(out["nll"].item(), rel=1e-12)
    codes2[1, 1, 0] = (codes2[1, 1, 0] + 1) % K  # an unmasked step does move it
    out3 = memory_loss(pred, next_z, reward, done, mask, next_codes=codes2)
    assert out3["nll"].item() != pytest.approx(out["nll"].item())


def brute_draw_codes(logits: np.ndarray, tau: float, uniform: np.ndarray) -> np.ndarray:
    """The first code k with u <= sum_{j<=k} softmax(logits / tau)_j."""
    out = np.zeros(uniform.shape, dtype=np.int64)
    for idx in np.ndindex(*uniform.shape):
        weights = [math.exp(v / tau) for v in logits[idx]]
        cumulative, out[idx] = 0.0, len(weights) - 1
        for k, w in enumerate(weights):
            cumulative += w / sum(weights)
            if uniform[idx] <= cumulative:
                out[idx] = k
                break
    return out


@pytest.mark.parametrize("tau", [0.4, 1.0, 3.0])
def test_draw_codes_is_inverse_cdf(tau):
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(50, 3, 5, generator=g, dtype=torch.float64)
    uniform = torch.rand(50, 3, generator=g, dtype=torch.float64)
    got = draw_codes(logits, tau, uniform)
    assert got.shape == (50, 3)
    np.testing.assert_array_equal(got.numpy(), brute_draw_codes(logits.numpy(), tau, uniform.numpy()))
    np.testing.assert_array_equal(draw_codes(logits, 0.0, uniform).numpy(), logits.argmax(-1).numpy())
    edge = draw_codes(logits[:1, :1], tau, torch.tensor([[1.0]], dtype=torch.float64))  # u = 1 stays in range
    assert edge.item() == 4


def test_draw_codes_frequencies_and_temperature():
    logits = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.0], dtype=torch.float64)
    n = 20_000
    uniform = ((torch.arange(n, dtype=torch.float64) + 0.5) / n)[:, None]  # an even grid of uniforms: exact frequencies
    entropies = []
    for tau in (0.25, 1.0, 4.0):
        codes = draw_codes(logits.expand(n, 1, 5), tau, uniform)
        freq = torch.bincount(codes.flatten(), minlength=5).double() / n
        torch.testing.assert_close(freq, torch.softmax(logits / tau, -1), rtol=0, atol=2 / n)
        entropies.append(-(freq * freq.clamp(min=1e-12).log()).sum().item())
    assert entropies[0] < entropies[1] < entropies[2] < math.log(5)


def categorical_memory(seed: int = 0) -> MDNRNN:
    torch.manual_seed(seed)
    memory = MDNRNN(MemoryConfig(hidden_size=8, num_gaussians=3), latent_dim=6, action_dim=2, positions=3, num_codes=5)
    memory.codebook.copy_(torch.randn(5, 2))
    return memory.eval()


def test_categorical_mdnrnn_step_matches_forward_and_draws_codebook_rows():
    memory = categorical_memory()
    assert memory.categorical and memory.head.out_features == 3 * 5 + 2
    assert "codebook" in memory.state_dict()  # the checkpoint carries it: M dreams without V
    g = torch.Generator().manual_seed(9)
    codes = torch.randint(5, (4, 7, 3), generator=g)
    z, action = memory.embed(codes), torch.randn(4, 7, 2, generator=g)
    assert z.shape == (4, 7, 6)
    torch.testing.assert_close(z.reshape(4, 7, 3, 2), memory.codebook[codes], rtol=0, atol=0)
    with torch.no_grad():
        whole, _ = memory(z, action)
        assert whole.logit_pi is None and whole.mu is None and whole.code_logits.shape == (4, 7, 3, 5)
        state = memory.initial_state(4)
        for t in range(7):
            one, state = memory.step(z[:, t], action[:, t], state)
            torch.testing.assert_close(one.code_logits, whole.code_logits[:, t], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(one.reward, whole.reward[:, t], rtol=1e-5, atol=1e-6)
        uniform = torch.rand(4, 6, generator=g)  # one per latent dimension, as the dream passes; the first P are used
        drawn = memory.draw(one, 1.0, uniform, torch.randn(4, 6))
    expected = memory.codebook[draw_codes(one.code_logits, 1.0, uniform[:, :3])]
    torch.testing.assert_close(drawn.reshape(4, 3, 2), expected, rtol=0, atol=0)
    argmax = memory.draw(one, 0.0, uniform, torch.randn(4, 6))
    torch.testing.assert_close(argmax, memory.embed(one.code_logits.argmax(-1)), rtol=0, atol=0)


# ---------------------------------------------------------------- the tiny recipe with a VQ-VAE

VQ = (
    "--run",
    "tinyvq",
    "--set",
    'vision.model="vqvae"',
    "--set",
    "vision.vqvae.num_embeddings=8",
    "--set",
    "vision.vqvae.embed_dim=2",
    "--set",
    "env.frame_size=32",
)  # 32-pixel frames: a 2 x 2 grid, so z is 4 codebook rows


def vq_cfg():
    """The recipe of the VQ run, as the CLI resolves it."""
    return config_lib.load(
        TINY,
        [
            'name="tinyvq"',
            'vision.model="vqvae"',
            "vision.vqvae.num_embeddings=8",
            "vision.vqvae.embed_dim=2",
            "env.frame_size=32",
        ],
    )


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory) -> dict:
    """The tiny recipe with a VQ-VAE, every stage through the CLI."""
    checkpoints_root, rollouts_root = tmp_path_factory.mktemp("vq_ck"), tmp_path_factory.mktemp("vq_ro")
    torch.manual_seed(0)
    for stage in ("collect", "train-vision", "encode", "train-memory", "train-controller", "evaluate"):
        assert cli_stage(stage, checkpoints_root, rollouts_root, *VQ) == 0, stage
    assert cli_stage("evaluate", checkpoints_root, rollouts_root, *VQ, "--world", "dream") == 0
    assert cli_stage("sample", checkpoints_root, rollouts_root, *VQ, "-n", "4") == 0
    return {"checkpoints": checkpoints_root, "rollouts": rollouts_root, "dir": checkpoints_root / "tinyvq"}


def row_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The code of each of z's rows (B, P x D) -> (B, P), asserting every row is exactly a codebook row."""
    rows = z.reshape(-1, codebook.shape[1])
    codes = nearest(rows, codebook)
    torch.testing.assert_close(rows, codebook[codes], rtol=0, atol=0)
    return codes.reshape(len(z), -1)


def test_vq_run_latents_hold_codes_and_m_holds_the_codebook(vq_run):
    run = vq_run["dir"]
    vision, memory = load_vision(run / "vision.pt"), load_memory(run / "memory.pt")
    assert isinstance(vision, VQVAE) and vision.positions == 4 and vision.latent_dim == 8
    assert memory.categorical and (memory.positions, memory.num_codes, memory.latent_dim) == (4, 8, 8)
    assert memory.cfg.sample_latents is False  # codes have no posterior spread
    torch.testing.assert_close(memory.codebook, vision.codebook, rtol=0, atol=0)
    assert checkpoints.load(run / "vision.pt", "vision")["config"]["model"] == "vqvae"

    files = sorted((run / "latents").glob("*.npz"))
    assert len(files) == 6
    seen = set()
    for path in files:
        with np.load(path) as d:
            assert "logstd" not in d and d["codes"].dtype == np.int16
            codes, mu = d["codes"].astype(np.int64), d["mu"].astype(np.float32)
            assert codes.shape == (len(mu), 4) and ((codes >= 0) & (codes < 8)).all()
            assert len(mu) == len(d["action"]) + 1
            # mu is the codes' codebook rows, stored as float16
            np.testing.assert_allclose(mu, vision.codebook.numpy()[codes].reshape(len(mu), 8), rtol=1e-3, atol=1e-4)
            seen |= set(codes.ravel().tolist())
    assert len(seen) > 1

    episodes = load_latents(checkpoints.Run(vq_run["checkpoints"], vq_cfg()))
    assert all(e.codes is not None and (e.logstd == 0).all() for e in episodes)
    item = SequenceDataset(episodes, 16)[0]
    n = int(item["mask"].sum())
    torch.testing.assert_close(item["next_codes"][: n - 1], item["codes"][1:n])
    assert item["codes"].dtype == torch.long and item["codes"].shape == (16, 4)
    # each of mu's rows is nearest to its own code's row
    ep = episodes[0]
    np.testing.assert_array_equal(
        nearest(torch.from_numpy(ep.mu).reshape(-1, 2), vision.codebook).reshape(-1, 4).numpy(), ep.codes
    )

    assert (run / "report.json").is_file() and (run / "report_dream.json").is_file()
    assert {p.name for p in (run / "samples").glob("*.png")} == {"reconstructions.png", "prior.png"}


@pytest.mark.parametrize("start", ["prior", "data"])
def test_vq_dream_z_is_always_codebook_rows(vq_run, start):
    run = vq_run["dir"]
    memory = load_memory(run / "memory.pt")
    starts = start_latents(load_latents(checkpoints.Run(vq_run["checkpoints"], vq_cfg())))
    dream = Dream(memory, DreamConfig(start=start, done="never", max_steps=30), starts)
    g = torch.Generator().manual_seed(0)
    dream.reset(torch.arange(200))
    if start == "prior":  # uniform random codes at every position
        codes = row_codes(dream.z, memory.codebook)
        counts = torch.bincount(codes.flatten(), minlength=8)
        assert counts.min() > 60 and counts.max() < 140  # 100 expected each
    else:  # the first frames' stored latents (float16 copies of codebook rows)
        rows = dream.z.reshape(-1, 2)
        torch.testing.assert_close(rows, memory.codebook[nearest(rows, memory.codebook)], rtol=1e-3, atol=1e-4)
    used = set()
    for _ in range(5):
        action = torch.nn.functional.one_hot(torch.randint(2, (200,), generator=g), 2).float()
        dream.step(action)
        used |= set(row_codes(dream.z, memory.codebook).flatten().tolist())
    assert len(used) > 1


@pytest.mark.parametrize(
    "override, message",
    [
        ('vision.model="vqgan"', "vision.model must be 'vae', 'vqvae', 'nvae' or 'pretrained'"),
        ('vision.vqvae.codebook_init="zeros"', "vision.vqvae.codebook_init must be 'kmeans' or 'random'"),
        ("vision.vqvae.num_embeddings=1", "vision.vqvae.num_embeddings must be 2..32767"),
        ("vision.vqvae.dead_after=-1", "vision.vqvae.dead_after must not be negative, got -1"),
        ('controller.world="codebook"', "the codebook world needs vision.model = 'vqvae'"),
    ],
)
def test_bad_vq_recipe_values_exit_2_with_one_line(tmp_path, capsys, override, message):
    assert cli_stage("train-vision", tmp_path / "ck", tmp_path / "ro", "--set", override) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("worldmodels train-vision: error: ") and message in lines[0], lines[0]
    assert not (tmp_path / "ck").exists()


def test_memory_with_another_codebook_than_vision_is_refused(vq_run, tmp_path):
    from worldmodels.agent import WorldModel
    from worldmodels.core.errors import WorldModelsError
    from worldmodels.runs import checkpoints

    run = vq_run["dir"]
    saved = checkpoints.load(run / "vision.pt", "vision")
    saved["state_dict"]["quantizer.embedding"] = saved["state_dict"]["quantizer.embedding"] + 0.01  # V trained on
    checkpoints.save(tmp_path / "vision.pt", saved)
    WorldModel.load(run / "vision.pt", run / "memory.pt")  # the pair as trained loads
    with pytest.raises(WorldModelsError, match="another codebook"):
        WorldModel.load(tmp_path / "vision.pt", run / "memory.pt")
