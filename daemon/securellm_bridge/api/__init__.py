"""The HTTPS inference plane: aiohttp app, routes, health, metrics and the listener."""
