"""The compare view: before/after slider, side by side, toggle, or one picture, smooth at 64 MP.

Public API (the main window uses only this)::

    from app.ui.compare import CompareView, CompareToolbar

    view = CompareView(parent)
    toolbar = CompareToolbar(view)            # place it above the view

    view.set_before(path_or_None, label="Input")    # loads in a worker thread
    view.set_after(path_or_None, label="Output")    # the after's size is the pixel grid
    view.set_preview(png_bytes_or_qimage_or_None, output_size=None, label="Preview")
    view.clear()
    view.set_empty_hint(title, subtitle="")
    view.set_mode("slider" | "side" | "toggle" | "single");  view.mode()
    view.effective_mode()                      # "single" while only one picture is present
    view.fit();  view.actual_size();  view.zoom_in();  view.zoom_out()
    view.zoom()                                # device px per after-pixel: 1.0 = 100%
    view.set_zoom(z, anchor=None)              # anchor: a QPointF in widget coordinates
    view.divider();  view.set_divider(fraction)   # 0..1 of the view's width
    view.swap();  view.showing_after();  view.set_flicker(ms)   # toggle mode
    view.has_before(); view.has_after(); view.can_compare(); view.is_loading(); view.is_fit()
    view.labels()                              # (before, after) labels as shown
    view.map_to_scene(pos); view.map_from_scene(point, pane_index=0)   # after-pixel coordinates

    Signals: mode_changed(str), zoom_changed(float), divider_changed(float),
             loading_changed(bool), images_ready(), load_failed(str),
             content_changed()   # which pictures are present changed

How the two pictures line up: both are drawn onto the *after's* pixel grid. The before (the input,
or another run's output of any size) is drawn scaled by after/before, with no upsampled copy
ever made; a live preview is stretched to ``output_size`` (else the before's frame) and stays
until the real after has loaded. With only one picture (or mode "single") it is shown alone.

Keys while the view has focus: 0 fit, 1 100%, + / = and − zoom, ←/→ move the divider (Shift:
10% steps; in other modes they pan), S slider, D side by side, T toggle, Space swap (toggle
mode). Mouse: wheel zooms around the cursor (stopping at 100% and at fit on the way), drag
with the left button (outside the divider's grip) or the middle button pans, double-click
toggles fit/100%; a touchpad pinch zooms.

Pictures are decoded by :func:`pipeline.io.load.load_image` and turned into a
:class:`~app.ui.compare.pyramid.Pyramid` off the GUI thread (a quick low-resolution preview shows
first for big files); a paint draws only the visible tiles of the level nearest the zoom.

Modules: ``view`` (the widget, its API and painting order), ``interaction`` (keys, mouse, wheel),
``sources`` (the two pictures and their loads), ``loader`` (the worker task), ``pyramid``,
``viewport`` (zoom/pan arithmetic, no Qt), ``painting`` (drawing helpers), ``toolbar``.
"""

from __future__ import annotations

from app.ui.compare.pyramid import Pyramid, build_pyramid
from app.ui.compare.toolbar import CompareToolbar
from app.ui.compare.view import MODES, CompareView

__all__ = ["MODES", "CompareToolbar", "CompareView", "Pyramid", "build_pyramid"]
