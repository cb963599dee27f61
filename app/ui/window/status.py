"""The status bar: the latest message, the engine's device, and whether the models are ready."""

from __future__ import annotations

from typing import Any, Protocol

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QLabel, QStatusBar, QWidget

__all__ = ["Say", "StatusBar"]


class Say(Protocol):
    """Show a message in the status bar (:meth:`StatusBar.say`): what the window's helpers get
    instead of the status bar itself."""

    def __call__(self, text: str, *, error: bool = False) -> None: ...


class _Clickable(QLabel):
    clicked = Signal()

    def mouseReleaseEvent(self, event: Any) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit()


class StatusBar(QStatusBar):
    models_clicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message = QLabel()
        self.message.setAccessibleName("Status message")
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.models = _Clickable("Models: checking…")
        self.models.setAccessibleName("Model readiness")
        self.models.setToolTip("Which modes can run here. Click to open the model manager.")
        self.models.setCursor(Qt.CursorShape.PointingHandCursor)
        self.models.clicked.connect(self.models_clicked)
        self.device = QLabel("Device: checking…")
        self.device.setAccessibleName("Engine device")
        self.device.setToolTip("Where the local engine runs (Settings ▸ Engine to change it)")
        self.addWidget(self.message, 1)
        self.addPermanentWidget(self.models)
        self.addPermanentWidget(self.device)
        self._clear = QTimer(self)
        self._clear.setSingleShot(True)
        self._clear.timeout.connect(lambda: self.message.setText(""))

    def say(self, text: str, *, error: bool = False) -> None:
        """Show a message; errors stay until the next message, others fade after a while."""
        first = text.strip().splitlines()[0] if text.strip() else ""
        self.message.setText(("⚠ " if error else "") + first)
        self.message.setToolTip(text)
        if error:
            self._clear.stop()
        else:
            self._clear.start(12_000)

    def set_device(self, text: str) -> None:
        self.device.setText(f"Device: {text}")
        self.device.setToolTip(f"The local engine runs on {text}. Settings ▸ Engine changes it.")

    def set_models(self, info: dict[str, Any]) -> None:
        faithful = "Faithful ready" if info.get("faithful") else "Faithful: Real-ESRGAN missing"
        missing = int(info.get("creative_missing", 0))
        if missing == 0:
            creative = "Creative ready"
        else:
            size = info.get("missing_bytes") or 0
            extra = f", {size / 1e9:.1f} GB" if size else ""
            creative = f"Creative: {missing} file{'s' if missing != 1 else ''} missing{extra}"
        self.models.setText(f"{faithful} · {creative}")
