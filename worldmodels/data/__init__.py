"""What the stages read and write between them: episodes, V's frame stream, M's latent episodes."""
