"""Double opt-in: `POST /subscribe`, its field rules, the confirmation email, `/confirm` and `/cancel`."""
