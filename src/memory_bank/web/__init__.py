"""`memorybank web`: the lab's memory in a browser, live.

A reader, like the viewer: read-only connections through the store's readers, the same
queries, and the daemon's tail for the live feed; it never writes. Starlette and uvicorn
come with the ``web`` extra; nothing outside this package imports them.
"""
