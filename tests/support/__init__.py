"""Helpers shared by the test suites; fixtures stay in the ``conftest.py`` files.

One module per job, so a test imports what it uses by name:

- ``paths``: the checkout and the installed ``broker`` command.
- ``http``: talking to a broker's API (auth headers, request ids, the error shape,
  ``issue``/``offboard`` that must succeed, the ``JsonApi`` base, timestamps).
- ``polling``: waiting for an eventually-true condition.
- ``tokens``: dev JWTs for identities the demo does not have.
- ``brokers``: in-process brokers (``create_app`` on a free port), also on a private ledger.
- ``processes``: ``broker serve`` as a real subprocess, started, stopped and killed;
  ``interrupt`` (Ctrl-C) for any subprocess.
- ``commands``: one-shot ``broker`` commands (``verify``, evidence, the client CLI).
- ``ledger``: reading the ledger's rows.
- ``ledger_db``: private, migrated ledger databases and real writers on them.
- ``forgery``: what a superuser can do to a ledger (rechain, replace rows).
- ``backends``: OpenBao and the demo database seen directly (leases, logins).
- ``policies``: policy directories with extra catalog entries and roles.
- ``elevation``: the elevation API and its "nothing minted" check.
- ``vault_proxy``: an HTTP proxy in front of OpenBao that records and refuses.
- ``faults``: a TCP proxy that cuts and slows a server's connections.
- ``sampler``: RSS and open fds of a process over time.
- ``logs``: a logging handler that keeps every record.
- ``heavy``: the ``RELIABILITY_HEAVY`` switch.
- ``reliability_report``: the rows the reliability suite records, and the table they render.

Nothing here imports a test module or a ``conftest``.
"""
