"""The window (``clarifier gui``), one sub-package per panel.

``app.py`` is the entry point and the one module that imports qasync. ``window`` holds the main
window and what wires it (the session with the job controller, menus, inputs, the status bar);
``compare``, ``params``, ``queue`` and ``history`` are its panels, ``dialogs`` the dialogs it
opens, and ``shared`` what several panels use (thumbnails, the plain words for jobs, revealing a
file). Panels import ``shared`` and nothing of each other or of ``window``: the window connects
them. The package ``__init__`` files import nothing, so importing one module never drags in a
whole panel.
"""
