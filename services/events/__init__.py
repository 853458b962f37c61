"""The call-event pipeline: event types and subjects, the JetStream connection, the
outbox relay (lanes, dead letters, retention) and the one reconnecting consumer that the
socket bridge and the webhook intake read the stream with."""
