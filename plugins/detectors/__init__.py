"""Built-in detectors plugins (one algorithm per file)."""
