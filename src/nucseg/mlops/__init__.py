"""The MLflow side: where runs go, what they record, the registry."""
