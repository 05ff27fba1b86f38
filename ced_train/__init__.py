"""Training side of CED: frontend, augmentation, models and the training loop."""

__all__ = []
