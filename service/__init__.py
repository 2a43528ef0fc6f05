"""Online candidate-matching service (FastAPI). Never imports torch or training code."""
