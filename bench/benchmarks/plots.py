"""Bar charts of what the benchmark scripts measured, drawn into image files (needs matplotlib,
imported only when a chart is drawn). No asv benchmark is defined here (asv imports every module
of this folder)."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReferenceLine:
    """A horizontal line across a panel: a target, or the baseline."""

    value: float
    label: str | None = None
    style: str = "--"
    color: str = "gray"
    width: float = 1.0


@dataclass(frozen=True)
class Panel:
    """One chart of a figure: a bar per series at each of the figure's labels."""

    series: dict[str, list[float]]  # name -> one value per label
    ylabel: str
    lines: list[ReferenceLine] = field(default_factory=list)
    ratios: bool = False  # a log scale, labelled with plain numbers
    height: float = 1.0  # relative to the figure's other panels


def bar_panels(labels: list[str], panels: list[Panel], path: str) -> None:
    """The panels stacked over one axis of ``labels``, written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    positions = range(len(labels))
    figure, axes_list = plt.subplots(
        len(panels),
        1,
        figsize=(max(8.0, 1.3 * len(labels)), 8),
        sharex=True,
        height_ratios=[panel.height for panel in panels],
        squeeze=False,
    )
    for panel, axes in zip(panels, axes_list[:, 0]):
        if len(panel.series) == 1:
            ((name, values),) = panel.series.items()
            axes.bar(positions, values, 0.5, color="tab:gray")
        else:
            width = 0.8 / len(panel.series)
            for index, (name, values) in enumerate(panel.series.items()):
                offset = (index - (len(panel.series) - 1) / 2) * width
                axes.bar([x + offset for x in positions], values, width, label=name)
        if panel.ratios:
            axes.set_yscale("log")
            plain_numbers = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
            axes.yaxis.set_major_formatter(plain_numbers)
            axes.yaxis.set_minor_formatter(plain_numbers)
        for line in panel.lines:
            axes.axhline(line.value, linestyle=line.style, linewidth=line.width, color=line.color, label=line.label)
        if len(panel.series) == 1:
            axes.legend(fontsize=8, loc="upper right")
        else:
            axes.legend(ncols=3, fontsize=8)
        axes.set_ylabel(panel.ylabel)
    axes_list[-1, 0].set_xticks(list(positions), labels, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
