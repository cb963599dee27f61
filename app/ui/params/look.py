"""How parameters read and look: labels, choice names, the error colour, small icons, and the
frame around each editor (reset button, error line) and around each group (collapsible section).

Presentation only (never what a field accepts), shared by the parameter panel's editors and the
presets bar. The icons are drawn in the palette's own colours, so light and dark themes both work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPalette, QPen, QPixmap
from PySide6.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from app.ui.params.fields import FieldEditor

__all__ = [
    "FieldRow",
    "Section",
    "choice_label",
    "die_icon",
    "error_color",
    "field_label",
    "format_value",
    "lock_icon",
]

# Presentation only: what a person reads. Anything not listed gets a prettified field name.
_LABELS = {
    "scale_factor": "Scale",
    "creativity": "Creativity (denoise)",
    "resemblance": "Resemblance (ControlNet)",
    "dynamic": "Dynamic (CFG)",
    "num_inference_steps": "Steps",
    "sd_model": "Checkpoint",
    "upscaler": "Pre-upscaler",
    "handfix": "Hand fix",
    "pattern": "Seamless texture",
    "multistep_factor": "Multi-step factor",
    "lora_links": "LoRA links",
    "custom_sd_model": "Custom checkpoint",
    "upscaler_channel_order": "Channel order",
    "noise_source": "Noise source",
    "downscaling": "Downscale first",
    "downscaling_resolution": "Downscale to",
    "creative.creativity": "Creativity",
    "creative.resemblance": "Resemblance",
    "creative.dynamic": "Dynamic (HDR)",
    "flux.creativity": "Creativity",
    "creative.style": "Style",
    "flux.lora_link": "LoRA link",
}
_CHOICE_LABELS = {
    "faithful": "Faithful (pre-upscaler only)",
    "creative": "Creative (diffusion)",
    "disabled": "Off",
    "hands_only": "Hands only",
    "image_and_hands": "Image and hands",
    "auto": "Auto",
    "rgb": "RGB",
    "bgr": "BGR",
    "png": "PNG",
    "jpg": "JPEG",
    "webp": "WebP",
}


def field_label(name: str) -> str:
    """The label a person reads for a dotted field name."""
    if name in _LABELS:
        return _LABELS[name]
    leaf = name.rsplit(".", 1)[-1]
    return leaf.replace("_", " ").capitalize()


def choice_label(value: Any) -> str:
    """How one choice reads in a combo: checkpoints without hash and suffix, tiles in pixels."""
    if isinstance(value, int):
        return f"{value} ({value * 8} px)"
    text = str(value)
    if text in _CHOICE_LABELS:
        return _CHOICE_LABELS[text]
    if " [" in text or text.endswith(".safetensors"):
        return text.split(" [")[0].removesuffix(".safetensors")
    return text[:1].upper() + text[1:]


def format_value(value: Any) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return choice_label(value) if isinstance(value, str) and len(value) < 60 else str(value)


def error_color(palette: QPalette) -> QColor:
    """A red that reads on this palette's window colour (there is no error role in QPalette)."""
    dark = palette.color(QPalette.ColorRole.Window).lightness() < 128
    return QColor(255, 120, 120) if dark else QColor(190, 30, 30)


def _icon(palette: QPalette, draw: Any) -> QIcon:
    pix = QPixmap(32, 32)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setPen(QPen(palette.color(QPalette.ColorRole.ButtonText), 3))
    draw(p)
    p.end()
    return QIcon(pix)


def lock_icon(palette: QPalette, locked: bool) -> QIcon:
    """A padlock drawn in the palette's text colour, open when ``locked`` is False."""

    def draw(p: QPainter) -> None:
        p.fillRect(QRectF(7, 15, 18, 14), p.pen().color())
        shackle = QPainterPath()
        x = 10 if locked else 18
        shackle.moveTo(x, 15)
        shackle.lineTo(x, 10)
        shackle.arcTo(QRectF(x, 3, 12, 14), 180, -180)
        shackle.lineTo(x + 12, 15 if locked else 10)
        p.drawPath(shackle)

    return _icon(palette, draw)


def die_icon(palette: QPalette) -> QIcon:
    """A die face: the "new random seed" button."""

    def draw(p: QPainter) -> None:
        p.drawRoundedRect(QRectF(4, 4, 24, 24), 5, 5)
        p.setBrush(p.pen().color())
        for x, y in ((10, 10), (16, 16), (22, 22), (22, 10), (10, 22)):
            p.drawEllipse(QPointF(x, y), 1.5, 1.5)

    return _icon(palette, draw)


class Section(QWidget):
    """A titled, collapsible form (the essentials have no title and never collapse)."""

    def __init__(self, title: str, expanded: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.header: QToolButton | None = None
        if title:
            self.header = QToolButton()
            self.header.setText(title)
            self.header.setCheckable(True)
            self.header.setAutoRaise(True)
            self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            self.header.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            font = self.header.font()
            font.setBold(True)
            self.header.setFont(font)
            self.header.setAccessibleName(f"{title} settings")
            self.header.setToolTip(f"Show or hide the {title.lower()} settings")
            self.header.toggled.connect(self.set_expanded)
            layout.addWidget(self.header)
        self.body = QWidget()
        self.form = QFormLayout(self.body)
        self.form.setContentsMargins(4, 0, 0, 4)
        self.form.setHorizontalSpacing(8)
        self.form.setVerticalSpacing(2)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.body)
        self.set_expanded(expanded)

    def is_expanded(self) -> bool:
        return not self.body.isHidden()

    def set_expanded(self, expanded: bool) -> None:
        self.body.setVisible(expanded)
        if self.header is not None:
            self.header.blockSignals(True)
            self.header.setChecked(expanded)
            self.header.blockSignals(False)
            arrow = Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow
            self.header.setArrowType(arrow)
            self.header.setAccessibleDescription("expanded" if expanded else "collapsed")


class FieldRow(QWidget):
    """An editor, its ↺ reset button and a line under it for an error ("⚠ …") or a note."""

    def __init__(self, editor: FieldEditor, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._error: str | None = None
        self._note: str | None = None
        self.editor = editor
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        top = QHBoxLayout()
        top.setSpacing(2)
        top.addWidget(editor, 1)
        self.reset = QToolButton()
        self.reset.setText("↺")
        self.reset.setAutoRaise(True)
        self.reset.setAccessibleName(f"Reset {editor.label}")
        self.reset.setToolTip(f"Reset {editor.label} to {format_value(editor.default)}")
        self.reset.clicked.connect(self.reset_to_default)
        top.addWidget(self.reset, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(top)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setContentsMargins(4, 0, 4, 2)
        self.message.hide()
        layout.addWidget(self.message)
        editor.edited.connect(self.refresh_reset)
        self.refresh_reset()

    def reset_to_default(self) -> None:
        self.editor.set_value(self.editor.default)
        self.editor.edited.emit()

    def refresh_reset(self) -> None:
        changed = self.editor.value() != self.editor.default
        self.reset.setEnabled(changed and self.editor.isEnabled())

    def error(self) -> str | None:
        return self._error

    def set_error(self, message: str | None) -> None:
        if message != self._error:
            self._error = message
            self.editor.set_invalid(message is not None)
            self.editor.focus_widget().setAccessibleDescription(message or "")
            self._show()

    def set_note(self, note: str | None) -> None:
        if note != self._note:
            self._note = note
            self._show()

    def _show(self) -> None:
        role = QPalette.ColorRole.WindowText
        palette = self.message.palette()
        if self._error:
            self.message.setText(f"⚠ {self._error}")
            palette.setColor(role, error_color(self.palette()))
        elif self._note:
            self.message.setText(self._note)
            palette.setColor(role, self.palette().color(QPalette.ColorRole.PlaceholderText))
        self.message.setPalette(palette)
        self.message.setAccessibleName(self.message.text())
        self.message.setVisible(bool(self._error or self._note))

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "message"):
            self._show()
        super().changeEvent(event)
