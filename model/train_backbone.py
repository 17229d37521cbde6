"""`python -m model.train_backbone`: train a face backbone end to end (the code is model/training/backbone_train.py)."""

from model.training.backbone_train import main

if __name__ == "__main__":
    main()
