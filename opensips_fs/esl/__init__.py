"""FreeSWITCH Event Socket client: sans-IO protocol, one connection, the connection manager."""
