"""Built-in features plugins (one algorithm per file)."""
