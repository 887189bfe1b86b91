"""Training: optimizers/schedules/regularizers and the plain epoch loop."""
