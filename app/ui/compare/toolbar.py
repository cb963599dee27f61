"""The compare view's toolbar: mode buttons, zoom controls and the zoom readout.

It only drives a :class:`~app.ui.compare.view.CompareView` through its public API and mirrors
the view's signals, so the lead can place it anywhere above the view.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QButtonGroup,
    QFrame,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QToolButton,
    QWidget,
)

from app.ui.compare.view import CompareView

_FLICKER_MS = 500


class CompareToolbar(QWidget):
    """Slider / Side by side / Toggle (+ auto flicker), zoom out, readout, zoom in, Fit, 100%."""

    def __init__(self, view: CompareView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._view = view
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(2)
        self._modes = QButtonGroup(self)
        self._modes.setExclusive(True)
        self.mode_buttons: dict[str, QToolButton] = {}
        for mode, text, name, tip in (
            (
                "slider",
                "Slider",
                "Before/after slider",
                "Before/after slider: drag the divider (S)",
            ),
            ("side", "Side by side", "Side by side", "Side by side, zoom and pan in sync (D)"),
            ("toggle", "Toggle", "Toggle before and after", "One at a time; Space swaps (T)"),
        ):
            button = self._button(text, name, tip, checkable=True)
            button.clicked.connect(lambda _=False, m=mode: view.set_mode(m))
            self._modes.addButton(button)
            self.mode_buttons[mode] = button
            layout.addWidget(button)
        self.flicker = self._button(
            "Flicker", "Flicker automatically", "Swap before and after twice a second", True
        )
        self.flicker.toggled.connect(lambda on: view.set_flicker(_FLICKER_MS if on else 0))
        layout.addWidget(self.flicker)
        layout.addStretch(1)
        line = QFrame(self)
        line.setFrameShape(QFrame.Shape.VLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        layout.addWidget(line)
        self.zoom_out = self._button("−", "Zoom out", "Zoom out (−)")
        self.zoom_out.clicked.connect(view.zoom_out)
        layout.addWidget(self.zoom_out)
        self.readout = QLabel(self)
        self.readout.setAccessibleName("Zoom level")
        self.readout.setToolTip("Zoom: 100% shows the result's pixels one to one")
        self.readout.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.readout.setMinimumWidth(self.readout.fontMetrics().horizontalAdvance("3200%") + 12)
        layout.addWidget(self.readout)
        self.zoom_in = self._button("+", "Zoom in", "Zoom in (+)")
        self.zoom_in.clicked.connect(view.zoom_in)
        layout.addWidget(self.zoom_in)
        self.fit = self._button("Fit", "Fit to window", "Fit the whole picture in view (0)", True)
        self.fit.clicked.connect(lambda _=False: view.fit())
        layout.addWidget(self.fit)
        self.actual = self._button("100%", "Actual size", "Actual pixels, 1:1 (1)")
        self.actual.clicked.connect(view.actual_size)
        layout.addWidget(self.actual)

        view.mode_changed.connect(self._sync)
        view.zoom_changed.connect(self._sync)
        view.content_changed.connect(self._sync)
        view.images_ready.connect(self._sync)
        self._sync()

    def _button(self, text: str, name: str, tip: str, checkable: bool = False) -> QToolButton:
        button = QToolButton(self)
        button.setText(text)
        button.setAccessibleName(name)
        button.setToolTip(tip)
        button.setCheckable(checkable)
        button.setAutoRaise(True)
        button.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        return button

    def _sync(self, *_: object) -> None:
        view = self._view
        compare = view.can_compare()
        for mode, button in self.mode_buttons.items():
            button.setEnabled(compare)
            button.setChecked(mode == view.mode())
        toggle = compare and view.mode() == "toggle"
        self.flicker.setVisible(toggle)
        self.flicker.blockSignals(True)
        self.flicker.setChecked(toggle and view.flickering())
        self.flicker.blockSignals(False)
        present = view.has_before() or view.has_after()
        for button in (self.zoom_out, self.zoom_in, self.fit, self.actual):
            button.setEnabled(present)
        self.fit.setChecked(present and view.is_fit())
        zoom = view.zoom() * 100
        self.readout.setText((f"{zoom:.0f}%" if zoom >= 10 else f"{zoom:.1f}%") if present else "")
