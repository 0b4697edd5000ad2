"""The codebook world (seed 000): build a network by writing VQ-VAE codebook vectors into a latent,
scored by a surrogate."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import gymnasium as gym
import numpy as np

ENV_ID = "worldmodels/Codebook-v0"


class CodebookEnv(gym.Env):
    """A latent of `num_slots` codebook vectors that an agent edits one slot at a time.

    Action (code, slot): code < num_embeddings writes codebook[code] into that slot; code == num_embeddings is the
    extra "terminate" code (terminated, reward 0, latent unchanged). After `max_allowed_actions` writes the episode is
    truncated: a budget, not a terminal state.
    Objective f(latent) = surrogate(decoder(latent)) - size_penalty * size(decoder(latent)); a write is rewarded
    f(after) - f(before), so the return of an episode telescopes to f(final) - f(initial).
    Observation {"latent": (num_slots, embed_dim) float32, "history": the last `num_previous_actions` writes as
    (code, slot) rows, most recent last, -1 rows before the first write}.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        embed_dim: int,
        num_embeddings: int,
        surrogate: Callable[[Any], float],
        decoder: Callable[[np.ndarray], Any],
        max_allowed_actions: int,
        codebook: np.ndarray,
        num_previous_actions: int,
        size_penalty: float = 0.0,
        size: Callable[[Any], float] | None = None,
        num_slots: int = 1,
    ):
        for name, value, least in [
            ("embed_dim", embed_dim, 1),
            ("num_embeddings", num_embeddings, 1),
            ("max_allowed_actions", max_allowed_actions, 1),
            ("num_previous_actions", num_previous_actions, 0),
            ("num_slots", num_slots, 1),
        ]:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        codebook = np.array(codebook, dtype=np.float32)  # a copy: the caller's codebook may change under us
        if codebook.shape != (num_embeddings, embed_dim):
            raise ValueError(
                f"codebook has shape {codebook.shape}, expected (num_embeddings, embed_dim) = "
                f"({num_embeddings}, {embed_dim})"
            )
        if not np.isfinite(codebook).all():
            raise ValueError("codebook has non-finite values")
        if not callable(surrogate) or not callable(decoder) or not (size is None or callable(size)):
            raise TypeError("surrogate, decoder and size must be callables")
        if not np.isfinite(size_penalty):
            raise ValueError(f"size_penalty must be finite, got {size_penalty!r}")
        if size_penalty != 0 and size is None:
            raise ValueError(f"size_penalty={size_penalty} needs a `size` function")
        self.embed_dim, self.num_embeddings, self.num_slots = int(embed_dim), int(num_embeddings), int(num_slots)
        self.max_allowed_actions, self.num_previous_actions = int(max_allowed_actions), int(num_previous_actions)
        self.surrogate, self.decoder, self.size, self.size_penalty = surrogate, decoder, size, float(size_penalty)
        self.codebook = codebook
        self.action_space = gym.spaces.MultiDiscrete([self.num_embeddings + 1, self.num_slots])
        self.observation_space = gym.spaces.Dict(
            {
                "latent": gym.spaces.Box(-np.inf, np.inf, (self.num_slots, self.embed_dim), np.float32),
                "history": gym.spaces.Box(
                    -1, max(self.num_embeddings, self.num_slots - 1), (self.num_previous_actions, 2), np.int64
                ),
            },
            sort_keys=False,
        )  # latent first, as the seed's S_t = [latent, history]; flattening keeps this order
        self.queries = 0  # surrogate calls over the env's life: the expensive part of a search
        self.codes: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "codes" in options:
            codes = self._check_codes(options["codes"])
        else:
            # a random code per slot, not a random vector: the latent stays made of codebook vectors
            codes = self.np_random.integers(self.num_embeddings, size=self.num_slots)
        self.codes = codes.astype(np.int64)
        self.latent = self.codebook[self.codes]  # fancy indexing copies: writes never touch the codebook
        self.history = np.full((self.num_previous_actions, 2), -1, dtype=np.int64)
        self.writes = 0
        self.evaluation = self._evaluate()  # f of the current state, cached so a write queries only the "after"
        return self._observation(), dict(self.evaluation)

    def step(self, action):
        if self.codes is None:
            raise RuntimeError("call reset() before step()")
        code, slot = self._check_action(action)
        if code == self.num_embeddings:
            return self._observation(), 0.0, True, False, dict(self.evaluation)
        self.codes[slot] = code
        self.latent[slot] = self.codebook[code]
        self.history = np.concatenate([self.history, [[code, slot]]])[1:]  # also right for num_previous_actions = 0
        self.writes += 1
        before = self.evaluation["objective"]
        self.evaluation = self._evaluate()
        reward = self.evaluation["objective"] - before
        truncated = self.writes >= self.max_allowed_actions
        return self._observation(), float(reward), False, truncated, dict(self.evaluation)

    def _evaluate(self) -> dict:
        """Decode the latent and query the surrogate once: architecture, score, size (if given) and objective f."""
        architecture = self.decoder(self.latent.copy())  # a copy: the decoder must not be able to edit the state
        score = float(self.surrogate(architecture))
        self.queries += 1
        info = {"architecture": architecture, "score": score, "objective": score}
        if self.size is not None:
            info["size"] = float(self.size(architecture))
            info["objective"] = score - self.size_penalty * info["size"]
        return info

    def _observation(self) -> dict:
        return {"latent": self.latent.copy(), "history": self.history.copy()}

    def _check_codes(self, codes) -> np.ndarray:
        """Start codes from reset options, one per slot, each a codebook row."""
        codes = np.asarray(codes)
        if codes.shape != (self.num_slots,) or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"options['codes'] must be {self.num_slots} integers (one per slot), got {codes.tolist()}")
        if ((codes < 0) | (codes >= self.num_embeddings)).any():
            raise ValueError(f"options['codes'] {codes.tolist()} out of range 0..{self.num_embeddings - 1}")
        return codes

    def _check_action(self, action) -> tuple[int, int]:
        """(code, slot) as ints; anything outside the action space is a clear error, not a silent wrap-around."""
        a = np.asarray(action)
        if a.shape != (2,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"action must be two integers (code, slot), got {action!r}")
        code, slot = int(a[0]), int(a[1])
        if not 0 <= code <= self.num_embeddings:
            raise ValueError(f"code {code} out of range 0..{self.num_embeddings} ({self.num_embeddings} terminates)")
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} out of range 0..{self.num_slots - 1}")
        return code, slot


def flat_world(env: gym.Env) -> gym.Env:
    """The world with float32 observations [latent.ravel(), history.ravel()], as a linear controller reads them.

    gymnasium's FlattenObservation does the concatenation (latent first, since the Dict keeps its order); it gives
    float64 because history is int64, so DtypeObservation brings it back to float32. No flattening code of our own.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "precision lowered" for the bounds: +-inf and small ints are exact in float32
        return gym.wrappers.DtypeObservation(gym.wrappers.FlattenObservation(env), np.float32)


if ENV_ID not in gym.registry:  # importing again (reloads, spawned workers) must not re-register and warn
    gym.register(ENV_ID, entry_point="worldmodels.worlds.codebook:CodebookEnv")
