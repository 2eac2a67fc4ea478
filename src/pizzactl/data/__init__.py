"""Data: Kaggle download (`download`), inspection (`report`), listing and splitting (`dataset`)."""
