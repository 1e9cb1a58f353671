"""Progress bars for batches and ablations that read as well saved as live.

In a terminal this is tqdm's text bar. In a notebook tqdm draws an ipywidget, which a notebook
saved and opened without a kernel shows as red broken-link icons (JupyterLab) or nothing at all
(nbconvert's HTML offline). So in a notebook the bar is shown as a :class:`View` with one live
part: the tqdm widget while a kernel is connected, and otherwise a static copy holding the bar's
last line as text (prompts done, rate, calls paid and reused, dollars), redrawn when the bar closes.
"""

from __future__ import annotations

from .display import Part, View
from .html import FONT, esc


class ProgressView(View):
    """A notebook tqdm bar as a view: the widget live, its last line as text when saved."""

    css_class = "moakit-progress"
    kernel_note = ""  # a finished bar's line needs no kernel to be read

    def __init__(self, bar):
        self.bar = bar

    def parts(self) -> list[Part]:
        return [Part("progress", "live", static=self.line, widget=lambda: self.bar.container)]

    def line(self) -> str:
        return (f"<div style='{FONT};font-size:12px;white-space:pre-wrap'><code>{esc(str(self.bar))}</code></div>")

    def __repr__(self) -> str:
        return str(self.bar)


def progress_bar(total: int, desc: str, unit: str):
    """A tqdm bar over ``total`` ``unit``s named ``desc``, displayed now: tqdm's text bar in a
    terminal, a :class:`ProgressView` in a notebook (saved, it shows its last line as text)."""
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    if not (isinstance(tqdm, type) and issubclass(tqdm, notebook_tqdm)):
        return tqdm(total=total, desc=desc, unit=unit)
    from IPython.display import display

    class NotebookBar(tqdm):
        view = None

        def close(self):
            super().close()
            if self.view is not None:  # the saved notebook keeps the bar's last line (redrawn once)
                view, self.view = self.view, None
                view.refresh()

    bar = NotebookBar(total=total, desc=desc, unit=unit, display=False)
    bar.view = ProgressView(bar)
    display(bar.view)
    return bar
