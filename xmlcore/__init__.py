"""xmlcore: interpretable extreme multi-label learning on images, the pure science.

Takes arrays, bytes and plain arguments; returns arrays, bytes and small dataclasses.
Never reads settings, environment variables, databases, object storage or queues.
"""
