"""OpenSIPS Management Interface: command registry, core commands, HTTP/FIFO/datagram transports."""
