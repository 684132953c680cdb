"""ws-relay: peers register in a room and exchange SDP, ICE candidates and messages.

Layout: ``protocol`` (frames to typed messages and back) and ``hub`` (room membership
and routing) are pure and tested without sockets; ``service`` holds the workflow
(registration, relay, leave) over a ``Link`` abstraction; ``server`` moves bytes
between ``websockets`` and the service.
"""
