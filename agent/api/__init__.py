"""Talking to Prefect: the REST client (the only reader of raw responses), the state
reporter, the outbox of reports kept while the API is away, and run log shipping."""
