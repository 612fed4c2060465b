"""Events for the shop's other systems: what a change of a person queues (in the change's own transaction) and how an event is signed (Standard Webhooks); the outbox delivers them."""
