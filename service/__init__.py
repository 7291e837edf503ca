"""Serving gradbook models from a notebook on the Jupyter Kernel Gateway."""
