"""The inspector's web viewer: static files (HTML, ES modules, CSS) served by ``api`` at ``/viewer``.

No Python code lives here; this file only makes the folder a package, so that the files ship in the
wheel and ``importlib.resources`` finds them wherever the archive is installed.
"""
