"""The ``redis_streams`` event source: order and customer events from a Redis Stream (a consumer group)."""
