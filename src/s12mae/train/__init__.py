"""The one training loop, its schedules, optimizers and checkpoints."""
