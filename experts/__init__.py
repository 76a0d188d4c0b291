"""Projection experts and routers (the UPM); output experts and task decoders come later."""
