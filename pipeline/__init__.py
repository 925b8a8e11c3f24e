"""Competition ensembling and test-time-augmentation pipeline for image classification."""
