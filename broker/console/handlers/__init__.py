"""Console handlers: thin, like the API's; the services do the work."""
