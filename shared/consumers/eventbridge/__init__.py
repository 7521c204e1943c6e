"""EventBridge as a message source, in the same shape as its siblings but smaller: only its
wire form (`_wire`: a `Message` from an event). There is no poller and nothing to settle:
the Lambda adapter (`shared.hosts.lambda_.eventbridge_handler`) raises for a failed event and
Lambda's asynchronous retries and on-failure destination do the rest."""

from shared.consumers.eventbridge._wire import message_from_eventbridge

__all__ = ["message_from_eventbridge"]
