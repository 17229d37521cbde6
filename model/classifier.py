"""`python -m model.classifier`: a person classifier with an Unknown class (the code is model/training/classifier_cli.py)."""

from model.training.classifier_cli import main

if __name__ == "__main__":
    main()
