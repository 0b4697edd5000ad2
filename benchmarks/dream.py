"""Dream throughput against a reference loop and a bound, at 1 and 2 threads, in one run.

    python benchmarks/dream.py [--recipe envs/carracing.toml] [--population 64] [--rollouts 16] [--steps 100]

- `batched`: the framework's dream, a whole CMA-ES population x rollouts as one batch (`play_dream`).
- `single`: the same dream one episode at a time.
- `reference`: a dream written the way existing World Models codebases write it: an `LSTMCell` and the mixture
  head stepped at batch 1, torch's own sampling (`multinomial`, `randn`), a linear controller, one episode at a time.
- `bound`: the bare batched LSTM cell and head matmuls at the batched dream's batch, no sampling, no controller:
  what a dream step cannot beat on this machine.
- `hash_us_per_step`: the counter-based noise alone, for the whole batch and for one episode.

M has the recipe's sizes (carracing: z 32, LSTM 256, 5 Gaussians, 3 actions: the original World Models) and is
untrained: speed does not depend on training. Episodes never end early (`done = "never"`), so every path dreams
exactly `--steps` steps per episode. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldmodels import config
from worldmodels.controller.linear import Controller
from worldmodels.core import noise
from worldmodels.memory import MDNRNN
from worldmodels.stages.memory import memory_sizes
from worldmodels.vision import build_vision, vision_config
from worldmodels.worlds.dream import Dream, play_dream
from worldmodels.worlds.real import action_space


def seconds(fn, repeats: int = 1) -> float:
    """The fastest of `repeats` timed calls: the least disturbed by whatever else runs."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


class ReferenceCell(nn.Module):
    """An MDRNN cell as the classic ports write it: `LSTMCell`, then one linear layer for the mixture, reward, done."""

    def __init__(self, memory: MDNRNN):
        super().__init__()
        m = memory.cfg
        self.z, self.k = memory.latent_dim, m.num_gaussians
        self.rnn = nn.LSTMCell(memory.latent_dim + memory.action_dim, m.hidden_size)
        self.head = nn.Linear(m.hidden_size, 3 * memory.latent_dim * m.num_gaussians + 2)
        with torch.no_grad():  # M's own weights, so both dreams compute the same functions
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.rnn, name).copy_(getattr(memory.lstm, f"{name}_l0"))
            self.head.load_state_dict(memory.head.state_dict())

    def forward(self, latent, action, hidden):
        h, c = self.rnn(torch.cat([latent, action], dim=1), hidden)
        out = self.head(h)
        logit_pi, mu, raw_sigma = out[:, :-2].view(-1, self.z, 3 * self.k).split(self.k, dim=-1)
        return logit_pi, mu, F.softplus(raw_sigma) + 1e-3, out[:, -2], (h, c)


@torch.inference_mode()
def reference_dream(cell: ReferenceCell, controller: nn.Linear, episodes: int, steps: int, tau: float) -> float:
    """Episodes one at a time, every step at batch 1 with torch's sampling; returns the summed reward."""
    total = 0.0
    hidden_size = cell.rnn.hidden_size
    for _ in range(episodes):
        z = torch.randn(1, cell.z)
        hidden = (torch.zeros(1, hidden_size), torch.zeros(1, hidden_size))
        for _ in range(steps):
            action = torch.tanh(controller(torch.cat([z, hidden[0]], dim=1)))
            logit_pi, mu, sigma, reward, hidden = cell(z, action, hidden)
            pi = F.softmax(logit_pi[0] / tau, dim=-1)  # (Z, K)
            k = torch.multinomial(pi, 1)  # a component per latent dimension
            z = (mu[0].gather(1, k) + sigma[0].gather(1, k) * math.sqrt(tau) * torch.randn(cell.z, 1)).view(1, -1)
            total += float(reward)
    return total


@torch.inference_mode()
def bound(memory: MDNRNN, batch: int, steps: int) -> None:
    """The dream's matmuls alone: the batched LSTM cell and M's head, no sampling, no controller."""
    m = memory.cfg
    weights = memory.lstm.all_weights[0]  # w_ih, w_hh, b_ih, b_hh, as MDNRNN.step passes them
    x = torch.randn(batch, memory.latent_dim + memory.action_dim)
    h, c = torch.zeros(batch, m.hidden_size), torch.zeros(batch, m.hidden_size)
    for _ in range(steps):
        h, c = torch.lstm_cell(x, (h, c), *weights)
        memory.head(h)


def hash_us_per_step(dream: Dream, batch: int, repeats: int = 200) -> float:
    """Microseconds of one step's noise (the dream's streams) for `batch` episodes, hashed one step at a time."""
    seeds, t = torch.arange(batch), torch.zeros(batch, dtype=torch.long)
    hash_steps = lambda: [noise.uniforms(seeds, t + i, dream.streams, dream.latent_dim) for i in range(repeats)]  # noqa: E731
    return 1e6 * seconds(hash_steps, 3) / repeats


def measure(memory: MDNRNN, cfg: config.Config, controllers: Controller, seeds: list[int], args) -> dict:
    """Every path's steps/s at the current thread count."""
    n, steps = len(seeds), args.steps
    dream = Dream(memory, cfg.dream, starts=torch.randn(100, 2, cfg.vision.latent_dim))
    play_dream(dream, controllers.select(torch.arange(8)), seeds[:8], 0)  # warm-up
    batched = n * steps / seconds(lambda: play_dream(dream, controllers, seeds, 0), args.repeats)
    few = args.single_episodes
    first = controllers.select(torch.arange(few))
    single = few * steps / seconds(lambda: play_dream(dream, first, seeds[:few], 1), args.repeats)
    cell = ReferenceCell(memory).eval()
    linear = nn.Linear(controllers.input_dim, controllers.out)
    reference = few * steps / seconds(lambda: reference_dream(cell, linear, few, steps, cfg.dream.tau), args.repeats)
    matmuls = n * steps / seconds(lambda: bound(memory, n, steps), args.repeats)
    return {
        "batched_steps_per_s": round(batched, 1),
        "single_steps_per_s": round(single, 1),
        "reference_steps_per_s": round(reference, 1),
        "bound_steps_per_s": round(matmuls, 1),
        "speedup_vs_reference": round(batched / reference, 1),
        "fraction_of_bound": round(batched / matmuls, 3),
        "single_vs_reference": round(single / reference, 2),
        "hash_us_per_step_batched": round(hash_us_per_step(dream, n), 1),
        "hash_us_per_step_single": round(hash_us_per_step(dream, 1), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="envs/carracing.toml")
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--rollouts", type=int, default=16)
    p.add_argument("--steps", type=int, default=100, help="dream steps per episode")
    p.add_argument("--single-episodes", type=int, default=16, help="episodes the batch-1 paths dream")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of every path; the fastest counts")
    args = p.parse_args()
    cfg = config.load(args.recipe, [("dream.max_steps", args.steps), ("dream.done", "never")])
    torch.manual_seed(0)
    memory = MDNRNN(cfg.memory, **memory_sizes(cfg, build_vision(vision_config(cfg)))).eval()
    space = action_space(cfg.env)
    input_dim = cfg.vision.latent_dim + cfg.memory.hidden_size
    rng = np.random.default_rng(0)
    population = Controller.from_flat(
        rng.normal(0, 0.1, (args.population, Controller(input_dim, space).num_params)), input_dim, space
    )
    controllers = population.select(torch.arange(args.population).repeat_interleave(args.rollouts))
    seeds = list(range(args.rollouts)) * args.population
    dream = Dream(memory, cfg.dream, starts=torch.randn(100, 2, cfg.vision.latent_dim))
    batched_returns, _ = play_dream(dream, controllers, seeds, 0)
    single_returns, _ = play_dream(dream, controllers, seeds, 1)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, cpu",
        "torch": torch.__version__,
        "recipe": args.recipe,
        "latent_dim": cfg.vision.latent_dim,
        "hidden_size": cfg.memory.hidden_size,
        "num_gaussians": cfg.memory.num_gaussians,
        "episodes": len(seeds),
        "steps_per_episode": args.steps,
        "same_returns_batched_and_single": bool(np.allclose(batched_returns, single_returns, atol=1e-3)),
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        result[f"threads_{threads}"] = measure(memory, cfg, controllers, seeds, args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
