"""Built-in attacks plugins (one algorithm per file)."""
