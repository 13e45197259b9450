"""HTTP layer: routes, thin handlers, middleware, OpenAPI."""
