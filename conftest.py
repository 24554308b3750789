"""Root conftest of the pytest-padbias repository.

The plugin itself is loaded through its ``pytest11`` entry point once the project is
installed (``pip install -e .``); nothing else is needed here.
"""
