"""DVC stage entry points: params and files in, the core and MLflow in between, outputs out."""
