"""Built-in segment sources that read files: CSV and JSON Lines, plain or gzip-compressed."""
