"""OpenSIPS Management Interface: command registry, core commands, HTTP/FIFO/datagram transports."""


class StartupError(Exception):
    """A transport could not start (address in use, bad path…); the message
    names the address or path."""
