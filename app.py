"""Hugging Face Spaces entry point (``app_file: app.py``); elsewhere run the ``echo-app`` console script."""
from app.main import main

if __name__ == "__main__":
    main()
