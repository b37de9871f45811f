"""Train states, optimizers, jitted steps, the loop, checkpoints and metrics."""
