"""A YOLOv8 experiment grid run as pytest tests, tracked in MLflow."""
