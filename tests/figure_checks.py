"""What a lecturer checks on a projected figure, measured on the matplotlib objects: every line stands out from the
background, no two labels overlap, each path can be seen. Written from the definitions (WCAG 2, the renderer's
bounding boxes), independently of optbench's own colour code."""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.text import Text


def wcag_contrast(colour, background) -> float:
    """WCAG 2.x contrast ratio: (L1 + 0.05) / (L2 + 0.05) of the relative luminances."""
    def luminance(c):
        rgb = np.array(to_rgb(c))
        rgb = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
        return float(rgb @ [0.2126, 0.7152, 0.0722])

    hi, lo = sorted((luminance(colour), luminance(background)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def drawn(fig):
    """The figure laid out and drawn (Agg), so texts have their final places."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig


def pale_lines(fig, ratio: float = 3.0) -> list[str]:
    """Every plotted line (and legend handle) whose colour has less than `ratio` contrast with its axes' background."""
    found = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for line in ax.get_lines():
            if line.get_visible() and len(line.get_xdata()):
                c = wcag_contrast(line.get_color(), ax.get_facecolor())
                if c < ratio:
                    found.append(f"{ax.get_title() or ax.get_ylabel()!r}: {line.get_label()!r} {c:.2f}")
    for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            colour = handle.get_color() if hasattr(handle, "get_color") else None
            if colour is not None and not isinstance(colour, np.ndarray) and wcag_contrast(colour, "white") < ratio:
                found.append(f"legend {text.get_text()!r} {wcag_contrast(colour, 'white'):.2f}")
    return found


def _drawn_tick_labels(axis) -> tuple[list[Text], set[int]]:
    """(the tick labels an axis draws: those at ticks inside its view, visible, non-empty; ids of all its labels)."""
    low, high = sorted(axis.get_view_interval())
    span = (high - low) or 1.0
    shown, every = [], set()
    for tick in axis.get_major_ticks() + axis.get_minor_ticks():
        every |= {id(tick.label1), id(tick.label2)}
        inside = low - 1e-9 * span <= tick.get_loc() <= high + 1e-9 * span
        shown += [t for t in (tick.label1, tick.label2) if inside and t.get_visible() and t.get_text().strip()]
    return shown, every


def texts(fig) -> list[Text]:
    """The texts a drawn figure shows: tick labels at ticks in view, titles, axis labels, legends, annotations."""
    ticks, every = [], set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            shown, ids = _drawn_tick_labels(axis)
            ticks += shown if ax.get_visible() else []
            every |= ids
    rest = [t for t in fig.findobj(Text) if id(t) not in every and t.get_visible() and t.get_text().strip()
            and (t.axes is None or t.axes.get_visible())]
    return ticks + rest


def overlaps(fig, pad: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of texts whose rendered bounding boxes overlap (by more than `pad` pixels each way)."""
    renderer = drawn(fig).canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts(fig)]
    found = []
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            w = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            h = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if w > pad and h > pad:
                found.append((a, b))
    return found


def labelled_ticks(axis) -> list[str]:
    """The tick labels an axis of a drawn figure shows (in view, visible, non-empty)."""
    return [t.get_text() for t in _drawn_tick_labels(axis)[0]]


def pixels(fig) -> np.ndarray:
    drawn(fig)
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def visible_share(fig, line, tolerance: int = 60) -> float:
    """The share of `line`'s points near which its own colour shows in the drawn figure (within its half width):
    1 = it can be followed all along, 0 = hidden under the lines drawn over it."""
    image = pixels(fig)
    colour = np.array(to_rgb(line.get_color())) * 255
    mine = np.abs(image - colour).sum(-1) < tolerance
    reach = int(np.ceil(line.get_linewidth() * fig.dpi / 72 / 2)) + 1
    points = line.get_transform().transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
    height, width = mine.shape
    seen = []
    for x, y in points:
        row, col = height - 1 - int(round(y)), int(round(x))
        if reach <= row < height - reach and reach <= col < width - reach:
            seen.append(mine[row - reach:row + reach + 1, col - reach:col + reach + 1].any())
    return float(np.mean(seen)) if seen else 0.0
