"""The foundation: models and checkpoints, layers, hooks, images, devices, errors."""
