"""Pure array code: images in, arrays and tables out. Knows nothing of MLflow, DVC or params files."""
