"""Plotly helpers with the conventions of the exercises: titles, axis labels, facets, text.

``imshow`` (heatmaps, optionally faceted with one label per facet), ``scatter`` (with an optional
``add_line="y=x"``), and ``line``. Each returns the figure; pass ``show=True`` to display it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import torch


def to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def _finish(fig: go.Figure, title: str | None, facet_labels: Sequence[str] | None, show: bool, renderer=None):
    if title:
        fig.update_layout(title=title)
    if facet_labels:
        for i, label in enumerate(facet_labels):
            if i < len(fig.layout.annotations):
                fig.layout.annotations[i]["text"] = label
    if show:
        fig.show(renderer=renderer)
    return fig


def imshow(
    tensor,
    title: str | None = None,
    labels: dict | None = None,
    x: Sequence | None = None,
    y: Sequence | None = None,
    facet_col: int | None = None,
    facet_labels: Sequence[str] | None = None,
    text_auto: bool | str = False,
    color_continuous_midpoint: float | None = 0.0,
    color_continuous_scale: str = "RdBu",
    show: bool = False,
    renderer=None,
    **kwargs,
) -> go.Figure:
    """A heatmap centred on 0 (red-blue), with facets and per-cell text if asked.

    ``labels={"x": ..., "y": ..., "color": ...}`` names the axes; ``facet_col`` splits a 3-D tensor
    along that dimension, and ``facet_labels`` titles each facet.
    """
    arr = to_numpy(tensor)
    fig = px.imshow(
        arr,
        x=x,
        y=y,
        labels=labels or {},
        facet_col=facet_col,
        text_auto=text_auto,
        color_continuous_midpoint=color_continuous_midpoint,
        color_continuous_scale=color_continuous_scale,
        aspect="auto",
        **kwargs,
    )
    return _finish(fig, title, facet_labels, show, renderer)


def scatter(
    x,
    y,
    title: str | None = None,
    labels: dict | None = None,
    text: Sequence[str] | None = None,
    add_line: str | None = None,
    show: bool = False,
    renderer=None,
    **kwargs,
) -> go.Figure:
    """A scatter plot; ``text`` labels each point, ``add_line="y=x"`` draws the diagonal."""
    xa, ya = to_numpy(x).ravel(), to_numpy(y).ravel()
    fig = px.scatter(x=xa, y=ya, labels=labels or {}, text=text, **kwargs)
    if text is not None:
        fig.update_traces(textposition="top center")
    if add_line is not None:
        if add_line.replace(" ", "") != "y=x":
            raise ValueError(f"add_line supports only 'y=x', got {add_line!r}.")
        lo = float(min(xa.min(), ya.min()))
        hi = float(max(xa.max(), ya.max()))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line=dict(dash="dash", color="grey")))
    return _finish(fig, title, None, show, renderer)


def line(
    y,
    x=None,
    title: str | None = None,
    labels: dict | None = None,
    names: Sequence[str] | None = None,
    show: bool = False,
    renderer=None,
    **kwargs,
) -> go.Figure:
    """One line per row of ``y`` (2-D) or a single line (1-D); ``names`` labels the rows."""
    arr = to_numpy(y)
    if arr.ndim == 1:
        arr = arr[None]
    xs = to_numpy(x) if x is not None else np.arange(arr.shape[-1])
    fig = go.Figure()
    for i, row in enumerate(arr):
        fig.add_trace(go.Scatter(x=xs, y=row, mode="lines", name=names[i] if names else f"series {i}"))
    labels = labels or {}
    fig.update_layout(xaxis_title=labels.get("x", "x"), yaxis_title=labels.get("y", "y"), **kwargs)
    return _finish(fig, title, None, show, renderer)
