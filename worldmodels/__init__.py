"""worldmodels: World Models agents in PyTorch (vision V, memory M, controller C)."""

import gymnasium as _gym

__version__ = "0.1.0"

# A run folder's dream and its real world seen as [z, h], for any gymnasium or RL-library agent:
# gym.make("worldmodels/Dream-v0", run="checkpoints/cartpole_dream")
_gym.register("worldmodels/Dream-v0", entry_point="worldmodels.worlds.latent:dream_env")
_gym.register("worldmodels/Latent-v0", entry_point="worldmodels.worlds.latent:latent_env")
