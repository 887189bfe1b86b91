"""Names shared by the code that runs a trial and the driver that records it (no imports: both sides use it)."""

PG_KEY = "rayclf_pg"  # the Train worker group's placement group (data-parallel trials only)
SUMMARY_KEY = "rayclf_summary"  # the end-of-trial summary, JSON, sent with the last epoch
RESUMED_KEY = "rayclf_resumed_from"  # the epoch a trial continued from (0: from scratch)
DATA_KEY = "rayclf_data_seconds"  # seconds the trial spent making its data ready (a cold node: download...)
TRACKING_KEY = "rayclf_tracking_fallback"  # why the trial's W&B run went offline (sent from then on)
CHECKPOINT_META = "rayclf.json"  # beside checkpoint.pt: which trial and epoch a checkpoint holds
EPOCH_KEYS = ("epoch", "phase", "lr", "train_loss", "train_accuracy", "train_seconds", "images_per_sec",
              "val_loss", "val_accuracy", "epoch_seconds", "node")
