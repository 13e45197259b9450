"""Outbound notifications (elevation events to chat webhooks); never on the request path."""

from broker.notify.webhook import Notification, WebhookNotifier

__all__ = ["Notification", "WebhookNotifier"]
