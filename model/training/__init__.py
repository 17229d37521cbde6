"""Offline work on the model, never imported by the server: datasets and the feature cache,
head training, fine-tuning, evaluation, reports and export (`python -m model.train`,
`model.evaluate`, `model.finetune` are its commands)."""
