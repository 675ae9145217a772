"""OpenSIPS Event Interface: published events, subscribers, delivery transports."""
