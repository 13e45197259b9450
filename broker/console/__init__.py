"""The web console: people's side of the broker, server-rendered, served under /console/.

It is another front end on the same services, not a second system:

- its routes are ``Route`` declarations (``console.routes``) installed into the broker's
  one route table, each with its ``Access``; the same ``_declared`` middleware enforces
  them, the same ``authorize`` decides, and a console action ledgers exactly what its API
  counterpart does, with ``client: {"api": "console"}``;
- who is signed in is a broker session (``broker.sessions``) made by the identity
  provider sign-in (``broker.oidc``) or, in development only, the dev sign-in; the session
  token travels in a sealed cookie (``console.cookies``) and is checked by the same
  ``Authenticator`` as a bearer token;
- every page gets the same security headers, and every state-changing form a CSRF token
  (``console.security``).
"""
