"""Built-in mitigations plugins (one algorithm per file)."""
