"""Running the stack on one machine: the embedded emulator, deployment, and local hosts.

Only `fleetline up` and the tests use this package; nothing here runs on AWS.
"""
