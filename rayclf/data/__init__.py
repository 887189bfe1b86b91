"""Datasets as uint8 arrays, device-resident loaders and batched on-device augmentation."""
