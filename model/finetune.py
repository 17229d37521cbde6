"""`python -m model.finetune`: fine-tune a backbone and the head (the code is model/training/finetune.py)."""

from model.training.finetune import main

if __name__ == "__main__":
    main()
