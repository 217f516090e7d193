"""The ``nats_jetstream`` event source: order and customer events from JetStream (a durable pull consumer)."""
