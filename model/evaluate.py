"""`python -m model.evaluate`: score the pipeline on face datasets (the code is model/training/evaluate.py)."""

from model.training.evaluate import main

if __name__ == "__main__":
    main()
