"""Code shared by auth-api, rooms-api and ws-relay.

Everything that touches AWS, tokens, errors, logs or metrics lives here once, so the
three services only hold their own logic.
"""

__version__ = "0.1.0"
