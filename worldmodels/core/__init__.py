"""The core every layer stands on: the error type, counter-based noise, torchrun's conventions, the action codec,
worker pools and progress."""
