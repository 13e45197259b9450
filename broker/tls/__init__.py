"""Transport security: certificates for the dev stack, contexts for serving and for the
broker's outbound connections."""
