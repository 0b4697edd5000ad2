"""The agent playing the real world: the lock-step loops, collection, the pools that run them, and the evaluators
every world offers the search."""
