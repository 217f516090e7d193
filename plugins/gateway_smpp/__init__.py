"""The ``smpp`` gateway: SMPP 3.4 binds to an SMSC on the shared session core."""
