"""The dialogs the window opens: settings (with a page per hosted provider), the model manager
and About."""
