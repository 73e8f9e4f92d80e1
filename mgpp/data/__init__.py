"""Task data: loading (local files or the hub) and tokenization."""
