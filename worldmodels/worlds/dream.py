"""The dream world: M hallucinates the next latent, the reward and the done; V draws it.

`Dream` is the simulator itself: B episodes as tensors on one device, advanced by one batched LSTM
step. `DreamEnv` and `DreamVectorEnv` put it behind gymnasium's single and vector APIs, and
`play_dream` runs a whole population of controllers in it at once (what CMA-ES uses).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from worldmodels.config import DreamConfig
from worldmodels.controller.linear import Controller, memory_actions
from worldmodels.core import noise
from worldmodels.core.actions import encode_actions
from worldmodels.memory import MDNRNN, Prediction, State, mixture_mean
from worldmodels.vision import VisionModel
from worldmodels.worlds.loop import Actor, Outcome, run_episodes

STEP_STREAMS = (
    noise.COMPONENT,
    noise.GAUSS_A,
    noise.GAUSS_B,
    noise.DONE,
)  # the draws of one step: component, Gaussian, done (hashed only where dones are sampled)


class Dream:
    """B dream episodes at once: M's LSTM state, the current z, the step count and each episode's seed.

    Every random draw is a hash of (episode seed, step), so an episode's trajectory does not depend on
    the other episodes in its batch.
    """

    def __init__(
        self,
        memory: MDNRNN,
        cfg: DreamConfig,
        starts: torch.Tensor | None = None,
        vision: VisionModel | None = None,
        others: list[MDNRNN] | None = None,
    ):
        self.memory, self.cfg, self.vision = memory, cfg, vision
        # the ensemble's other M's (memory.ensemble), fed what M dreams, only to measure dream.disagreement
        self.others = (others or []) if cfg.disagreement else []
        self.device = next(memory.parameters()).device
        # (N, 2, Z): mean and log-std of real frames to start from; None starts from V's prior N(0, I)
        self.starts = None if starts is None or cfg.start == "prior" else starts.to(self.device, torch.float32)
        self.latent_dim = memory.latent_dim
        self.streams = STEP_STREAMS if cfg.done == "sample" else STEP_STREAMS[:3]
        self.block_steps = 32  # small batches hash this many steps of noise at once; 0: every step on its own
        self.reset(torch.zeros(0, dtype=torch.long))

    @property
    def observation_dim(self) -> int:
        return self.latent_dim + self.memory.readout_size

    def _start_latents(self, seeds: torch.Tensor) -> torch.Tensor:
        before = torch.full_like(seeds, -1)  # step -1: draws that no later step repeats
        eps = noise.normal(seeds, before, self.latent_dim)
        if self.starts is None and self.memory.categorical:  # a discrete V's prior: uniform codes
            m = self.memory
            codes = (
                (noise.uniform(seeds, before, noise.START, m.positions) * m.num_codes).long().clamp(max=m.num_codes - 1)
            )
            return self.memory.embed(codes)
        if self.starts is None:
            return eps
        pick = (
            (noise.uniform(seeds, before, noise.START, 1)[:, 0] * len(self.starts))
            .long()
            .clamp(max=len(self.starts) - 1)
        )
        mean, logstd = self.starts[pick, 0], self.starts[pick, 1]
        return mean + logstd.exp() * eps if self.memory.cfg.sample_latents else mean

    @torch.inference_mode()
    def reset(self, seeds: torch.Tensor) -> torch.Tensor:
        """Start len(seeds) episodes; returns their observations [z, h]."""
        self.seeds = seeds.to(self.device, torch.long)
        self.t = torch.zeros_like(self.seeds)
        self.z = self._start_latents(self.seeds)
        self.state = self.memory.initial_state(len(self.seeds), self.device)
        self.other_states: list[State] = [m.initial_state(len(self.seeds), self.device) for m in self.others]
        self._block: tuple[torch.Tensor, torch.Tensor] | None = None
        return self.observation()

    @torch.inference_mode()
    def reset_rows(self, rows: torch.Tensor, seeds: torch.Tensor) -> None:
        """Restart the episodes at boolean `rows` in place with new seeds."""
        rows = rows.to(self.device)
        self.seeds[rows] = seeds.to(self.device, torch.long)
        self.t[rows] = 0
        self.z[rows] = self._start_latents(self.seeds[rows])
        for part in [*self.state, *(part for state in self.other_states for part in state)]:
            part[:, rows] = 0
        if self._block is not None and rows.any():  # the restarted rows' noise from their step 0; the others' stays
            self._block[0][rows] = 0
            self._block[1][rows] = self._hash_block(self.seeds[rows], self.t[rows])

    def observation(self) -> torch.Tensor:
        """What C sees: [z, h] (B, Z + H), or [z, h, c]."""
        return torch.cat([self.z, self.memory.readout(self.state)], dim=-1)

    @torch.inference_mode()
    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every episode by M's action input (B, A): (reward, terminated, truncated), each (B,)."""
        keep = None
        # M's dropout kept on: every step dreams with another sub-network
        if self.cfg.dropout and self.memory.cfg.dropout:
            keep = (
                noise.uniform(self.seeds, self.t, noise.DROPOUT, self.memory.cfg.hidden_size) >= self.memory.cfg.dropout
            ).float()
        action = action.to(self.device, torch.float32)
        prediction, self.state = self.memory.step(self.z, action, self.state, keep)
        penalty = self._disagreement(prediction, action) if self.others else 0.0
        u = self._step_noise()
        self.z = self.memory.draw(prediction, self.cfg.tau, u[:, 0], noise.box_muller(u[:, 1], u[:, 2]))
        prediction = self.memory.complete(prediction, MDNRNN.hidden(self.state), self.z)
        if self.cfg.done == "sample":
            terminated = u[:, 3, 0] < self.memory.done_probability(prediction)
        elif self.cfg.done == "threshold":
            terminated = self.memory.done_probability(prediction) > self.cfg.done_threshold
        else:
            terminated = torch.zeros(len(self.t), dtype=torch.bool, device=self.device)
        self.t = self.t + 1
        truncated = (self.t >= self.cfg.max_steps) & ~terminated
        return prediction.reward - penalty, terminated, truncated

    def _disagreement(self, prediction: Prediction, action: torch.Tensor) -> torch.Tensor:
        """dream.disagreement x the spread of the ensemble's expected next z, (B,); the other M's step on the z M
        dreamt last, so they judge the dream, not their own."""
        means = [mixture_mean(prediction)]
        for k, other in enumerate(self.others):
            theirs, self.other_states[k] = other.step(self.z, action, self.other_states[k])
            means.append(mixture_mean(theirs))
        return self.cfg.disagreement * torch.stack(means).std(0).mean(-1)

    def _step_noise(self) -> torch.Tensor:
        """(B, S, Z) uniforms of this step's streams (`self.streams`), hashed from each episode's seed and step.

        The hash costs about as much for one episode as for hundreds, so a small batch (one `DreamEnv`, an RL
        library's few copies) hashes its next `block_steps` steps in one pass and reads them from there: the same
        bits, the hash being exact integer arithmetic.
        """
        b = len(self.t)
        if not self.block_steps or b * self.block_steps > 4096:  # big batches already fill the hash's wide operations
            return noise.uniforms(self.seeds, self.t, self.streams, self.latent_dim)
        if self._block is not None:
            start, block = self._block
            offset = self.t - start
            if bool((offset < self.block_steps).all()):
                return block[torch.arange(b, device=self.device), offset]
        self._block = (self.t.clone(), self._hash_block(self.seeds, self.t))
        return self._block[1][:, 0]

    def _hash_block(self, seeds: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(n, block_steps, S, Z): the uniforms of steps t, t + 1, ... of each episode."""
        ahead = torch.arange(self.block_steps, device=self.device)
        u = noise.uniforms(
            seeds.repeat_interleave(self.block_steps), (t[:, None] + ahead).flatten(), self.streams, self.latent_dim
        )
        return u.reshape(len(seeds), self.block_steps, len(self.streams), self.latent_dim)

    @torch.inference_mode()
    def keep(self, rows: torch.Tensor) -> None:
        """Drop every episode not in boolean `rows` (finished episodes leave the batch)."""
        rows = rows.to(self.device)
        self.seeds, self.t, self.z = self.seeds[rows], self.t[rows], self.z[rows]
        self.state = (self.state[0][:, rows], self.state[1][:, rows])
        self.other_states = [(h[:, rows], c[:, rows]) for h, c in self.other_states]
        if self._block is not None:
            self._block = (self._block[0][rows], self._block[1][rows])

    @torch.inference_mode()
    def frames(self) -> np.ndarray:
        """V's picture of every episode's current z: (B, H, W, 3) uint8."""
        if self.vision is None:
            raise RuntimeError("this dream was built without V, so it cannot be drawn")
        images = self.vision.decode(self.z.to(next(self.vision.parameters()).device))
        return (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def dreamt_outputs(dream: Dream, controller: Controller, action_noise: float) -> torch.Tensor:
    """C's outputs (B, A) on the dream's [z, h]; with `action_noise`, plus Gaussian noise of that std drawn from
    each episode's seed and step, added where `Controller.act` adds it in the real world: to tanh of the logits."""
    z, h = dream.z, dream.memory.readout(dream.state)
    if not action_noise:
        return controller.outputs(z, h)
    u = noise.uniforms(dream.seeds, dream.t, (noise.ACTION_A, noise.ACTION_B), controller.out)
    return controller.outputs(z, h, noise=action_noise * noise.box_muller(u[:, 0], u[:, 1]).to(z.device))


class DreamCopies:
    """The dream as copies of a world for `run_episodes`: one row of `Dream` per copy, finished rows dropped (or
    restarted in place while episodes wait). C reads the dream's own z and h, so the observation is empty; with
    `draw`, V's pictures of every z are kept in `drawn`."""

    drops_finished = True

    def __init__(
        self, dream: Dream, copies: int, space: gym.Space, draw: bool = False, start: torch.Tensor | None = None
    ):
        self.dream, self.num_envs, self.single_action_space, self.draw = dream, copies, space, draw
        self.start = start  # replaces the first latent of the first episodes, e.g. V's reading of a real first frame
        self.drawn: list[np.ndarray] = []  # (B, H, W, 3) after every reset and step, with `draw`

    def observation(self) -> np.ndarray:
        if self.draw:
            self.drawn.append(self.dream.frames())
        return np.zeros((len(self.dream.t), 0), dtype=np.uint8)

    def reset(self, seeds: list[int | None], mask: np.ndarray) -> np.ndarray:
        chosen = torch.tensor([seeds[i] for i in np.flatnonzero(mask)])
        if mask.all():
            self.dream.reset(chosen)
            if self.start is not None:
                self.dream.z[:] = self.start.to(self.dream.device, torch.float32)
        else:
            self.dream.reset_rows(torch.from_numpy(mask), chosen)
        return self.observation()[mask]

    def step(self, actions: torch.Tensor) -> Outcome:
        reward, terminated, truncated = (t.cpu().numpy() for t in self.dream.step(actions))
        ones = np.ones(len(reward), dtype=np.int64)
        return Outcome(self.observation(), reward, terminated, truncated, ones, None)

    def keep(self, rows: np.ndarray) -> None:
        self.dream.keep(torch.from_numpy(rows))


class DreamActor(Actor):
    """C acting on the dream's [z, h], row by row of the population, its outputs left on the dream's device as M's
    action input (the dream's M remembers them itself); `action_noise`: controller.noise (see `dreamt_outputs`)."""

    def __init__(self, dream: Dream, controller: Controller, action_noise: float = 0.0):
        self.dream, self.controller, self.noise, self.outputs = dream, controller, action_noise, controller.out
        self.rows = np.zeros(0, dtype=np.int64)
        self.acting = controller

    def act(self, obs: np.ndarray, rows: np.ndarray, noise: np.ndarray | None) -> torch.Tensor:
        if not np.array_equal(rows, self.rows):  # the rows change only as episodes end: select C's rows then
            self.rows, self.acting = rows, self.controller.select(torch.from_numpy(rows)).to(self.dream.device)
        return memory_actions(dreamt_outputs(self.dream, self.acting, self.noise), self.controller.space)


@torch.inference_mode()
def play_dream(
    dream: Dream, controller: Controller, seeds: list[int], batch: int = 0, action_noise: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Episode k dreamt with controller row k and seeds[k], `batch` episodes at a time (0: all): (returns, steps).

    `action_noise`: controller.noise, C's own noise (see `dreamt_outputs`)."""
    copies = DreamCopies(dream, min(batch or len(seeds), len(seeds)), controller.space)
    played = run_episodes(copies, DreamActor(dream, controller, action_noise), seeds)
    return np.array([p.ret for p in played]), np.array([p.frames for p in played])


# ---------------------------------------------------------------- gymnasium faces


def observation_space(z: int, memory: MDNRNN) -> gym.spaces.Box:
    """[z, h] or [z, h, c]: z and c unbounded, the LSTM's h in [-1, 1]."""
    h, c = memory.cfg.hidden_size, memory.readout_size - memory.cfg.hidden_size
    low = np.concatenate([np.full(z, -np.inf), -np.ones(h), np.full(c, -np.inf)]).astype(np.float32)
    return gym.spaces.Box(low, -low, dtype=np.float32)


class DreamEnv(gym.Env):
    """One dream episode behind gymnasium's Env API; observation [z, h], actions of the real world."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, dream: Dream, action_space: gym.Space, render_mode: str | None = None):
        self.dream, self.render_mode = dream, render_mode
        self.action_space = action_space
        self.observation_space = observation_space(dream.latent_dim, dream.memory)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        # the seed itself names the episode, so DreamEnv(seed=s) dreams what DreamVectorEnv(seed=s - i) dreams in row i
        episode = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
        obs = self.dream.reset(torch.tensor([episode]))
        return obs[0].cpu().numpy(), {}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        encoded = torch.from_numpy(encode_actions(np.asarray([action]), self.action_space))
        reward, terminated, truncated = self.dream.step(encoded)
        obs = self.dream.observation()[0].cpu().numpy()
        return obs, float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self) -> np.ndarray:
        return self.dream.frames()[0]


class DreamVectorEnv(gym.vector.VectorEnv):
    """B dream episodes behind gymnasium's vector API: one batched M step for all, finished ones reset in place."""

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, dream: Dream, action_space: gym.Space, num_envs: int, render_mode: str | None = None):
        self.dream, self.num_envs, self.render_mode = dream, num_envs, render_mode
        self.single_action_space = action_space
        self.single_observation_space = observation_space(dream.latent_dim, dream.memory)
        self.action_space = gym.vector.utils.batch_space(action_space, num_envs)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)

    def _fresh_seeds(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.np_random.integers(0, 2**31 - 1, size=n))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        # like gymnasium's vector envs: sub-environment i gets seed + i
        seeds = torch.arange(self.num_envs) + seed if seed is not None else self._fresh_seeds(self.num_envs)
        mask = (options or {}).get("reset_mask")
        if mask is not None and len(self.dream.seeds) == self.num_envs:  # only these rows restart, the rest go on
            mask = np.asarray(mask, dtype=bool)
            self.dream.reset_rows(torch.from_numpy(mask), seeds[torch.from_numpy(mask)])
            self._autoreset[mask] = False
            return self.dream.observation().cpu().numpy(), {}
        self._autoreset[:] = False
        return self.dream.reset(seeds).cpu().numpy(), {}

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        encoded = torch.from_numpy(encode_actions(np.asarray(actions), self.single_action_space))
        reward, terminated, truncated = (t.cpu().numpy() for t in self.dream.step(encoded))
        restart = self._autoreset
        if restart.any():  # next-step autoreset: these rows ended last step, so this step only restarts them
            self.dream.reset_rows(torch.from_numpy(restart), self._fresh_seeds(int(restart.sum())))
            reward, terminated, truncated = np.where(restart, 0.0, reward), terminated & ~restart, truncated & ~restart
        self._autoreset = terminated | truncated
        return self.dream.observation().cpu().numpy(), reward.astype(np.float64), terminated, truncated, {}

    # one (B, H, W, 3) array for the batch, where VectorEnv's annotation has a tuple of frames or None
    def render(self) -> np.ndarray:  # type: ignore[override]
        return self.dream.frames()


def filmstrip(frames: np.ndarray, axis: int = 1, most: int = 16) -> np.ndarray:
    """Every k-th of (T, H, W, 3) frames, at most `most`, joined along `axis`
    (1: a row, 0: a column) into one picture."""
    every = -(-len(frames) // most)
    return np.concatenate(list(frames[::every]), axis=axis)


@torch.inference_mode()
def dream_rollout(
    dream: Dream, controller: Controller, seed: int, start: torch.Tensor | None = None, action_noise: float = 0.0
) -> tuple[np.ndarray, float]:
    """One dream episode of a single controller, drawn by V: frames (T+1, H, W, 3) and the return.

    `start` (Z,) replaces the drawn first latent, e.g. V's encoding of a real first frame; `action_noise` as in
    `play_dream`.
    """
    copies = DreamCopies(dream, 1, controller.space, draw=True, start=start)
    [played] = run_episodes(copies, DreamActor(dream, controller, action_noise), [seed])
    return np.concatenate(copies.drawn), played.ret
