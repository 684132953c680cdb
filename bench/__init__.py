"""``make bench``: this relay beside PeerJS server and a null ``websockets`` forwarder.

``run`` starts the systems one after another on loopback and drives each with ``loadgen``
(its own process); ``report`` turns the JSON it writes into docs/benchmarks.md and the plot.
"""
