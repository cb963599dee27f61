"""The main window and what wires it: the session (job controller and stores), the menus and
shortcuts, taking inputs (drops, paste, links), the input strip, the status bar, the theme and
what the window remembers between sessions."""
