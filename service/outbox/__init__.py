"""The outbox worker: claims queued jobs, has each kind's composer build its email, sends within the rate caps and the circuit breaker; delivers the events for other systems."""
