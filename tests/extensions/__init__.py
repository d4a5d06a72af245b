"""Toy extensions, one file each, registered by ``tests/test_extension_points.py``: what adding a
retrieval method, a token reducer or a storage backend takes."""
