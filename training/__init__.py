"""Training, evaluation (COCO AP), prior estimation hooks and distributed runs."""
