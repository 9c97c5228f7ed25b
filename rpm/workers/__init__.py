"""Background workers of the service: the SMS outbox, the alert timers, and their loop."""
