"""`python -m model.train`: train the 128-unit head (the code is model/training/train.py)."""

from model.training.train import main

if __name__ == "__main__":
    main()
