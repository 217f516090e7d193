"""The ``rabbitmq`` event source: order and customer events from a RabbitMQ (AMQP 0-9-1) queue."""
