"""Built-in ``http`` gateway: batches of messages to an HTTP/JSON API on one pooled httpx client."""
