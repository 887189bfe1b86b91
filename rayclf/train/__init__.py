"""Training: optimizers/schedules/regularizers and the plain epoch loop."""

CHECKPOINT_FILE = "checkpoint.pt"  # a checkpoint folder's weights; here, torch-free: the sweep driver lists them
