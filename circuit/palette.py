"""The claim report's colours, and the contrast every text colour keeps (WCAG 2 AA: at least 4.5:1).

A verdict is read from its colour before its word: green supported, red refuted, amber inconclusive, purple
an error, grey skipped. Each colour here is dark enough that text in it reads on the report's backgrounds
(white, the light grey of code and logs, the pale yellow of a highlighted row); :func:`contrast_ratio` is
WCAG's formula, and ``tests/test_report_screen.py`` checks every pair, and every text of a rendered report.
"""

from __future__ import annotations

__all__ = ["BACKGROUNDS", "BAR_OPACITY", "LINK_COLOUR", "MARKERS", "MUTED_COLOUR", "TEXT_COLOUR", "VERDICT_COLOURS",
           "contrast_ratio", "over_white", "relative_luminance"]

VERDICT_COLOURS = {"supported": "#1a7f37", "refuted": "#cf222e", "inconclusive": "#9a6700", "error": "#8250df",
                   "skipped": "#57606a", "passed": "#1a7f37", "failed": "#cf222e"}
"""Text colour of each verdict (and of the outcomes passed / failed / error / skipped)."""
TEXT_COLOUR = "#1f2328"
"""Body text."""
MUTED_COLOUR = "#57606a"
"""Secondary text: legends, statements, skipped tests."""
LINK_COLOUR = "#0969da"
MARKERS = {"regressed": ("▼", "#a40e26", "regressed: moved toward failing since the baseline"),
           "improved": ("▲", "#0550ae", "improved: moved away from failing since the baseline")}
"""The baseline comparison's own marks (symbol, colour, meaning), beside the verdict's colour, never instead."""
BAR_OPACITY = 0.8
"""Opacity of a forest plot's interval bar over white: its verdict colour keeps at least 3:1 there (WCAG's
contrast for graphics), and the estimate's dot, drawn opaque, stands out on it."""
BACKGROUNDS = ("#ffffff", "#f6f8fa", "#fff8c5")
"""What text is drawn on: the page, code and logs, the highlighted row of the prompt set shown."""


def relative_luminance(colour: str) -> float:
    """WCAG 2's relative luminance of an sRGB colour ``#rrggbb``."""
    digits = colour.lstrip("#")
    if len(digits) != 6:
        raise ValueError(f"colour {colour!r}: write it as #rrggbb.")
    channels = [int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def over_white(colour: str, opacity: float) -> str:
    """``colour`` drawn at ``opacity`` over white, as ``#rrggbb``."""
    channels = [int(colour.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)]
    return "#" + "".join(f"{round(opacity * c + (1 - opacity) * 255):02x}" for c in channels)


def contrast_ratio(foreground: str, background: str) -> float:
    """WCAG 2's contrast ratio of two colours, from 1 (the same) to 21 (black on white)."""
    light, dark = sorted((relative_luminance(foreground), relative_luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)
