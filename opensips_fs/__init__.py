"""opensips-fs: OpenSIPS's freeswitch + freeswitch_scripting modules as a standalone service."""

__version__ = "0.1.0"
