"""The YAML configuration: models, loading with line numbers, and semantic checks."""
