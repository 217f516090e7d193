"""Built-in ``file`` gateway: writes each accepted message as one JSON line, for dry runs and audits."""
