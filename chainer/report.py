"""What a person looks at after a run: a contact sheet per chain and one HTML report.

The contact sheet is a PNG with one frame at each segment boundary of the chain's final
video (the first frame that segment added), labelled with the step number, the time in
the final video and the prompt: a whole chain judged at a glance. `report.html` shows,
per chain, the final video, its contact sheet, and a table of the steps (current takes
and earlier ones) with their prompts, durations, units, task ids and archive files. Every
link in it is relative, so the report opens from disk in a browser, with no server, and
keeps working when the archive and output folders are moved together.
"""

from __future__ import annotations

import datetime as dt
import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import archive, media
from .advice import what_next
from .chain import ChainView, StepRow
from .events import ChainResult
from .journal import Journal

if TYPE_CHECKING:  # Pillow loads when a report is drawn, not with every start
    from PIL import Image, ImageFont

#: Contact sheet layout: thumbnails per row, thumbnail width, caption lines under each.
COLUMNS = 4
THUMB_WIDTH = 240
CAPTION_LINES = 3


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrap(text: str, width: int, lines: int) -> list[str]:
    words, out, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        out.append(line)
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: max(0, width - 3)] + "..."
    return out


def thumbnail(rows: Sequence[StepRow], row: StepRow) -> Image.Image:
    """The first frame `row`'s step added, taken from its own archived video (the whole
    part so far), seeking to it: cheap, so the runner takes each as its download lands."""
    assert row.file is not None
    info = media.probe(row.file)
    before = ChainView.of(rows).part_start(row.idx)
    frame = round((before.probed_duration or before.duration or 0.0) * info.fps) if before else 0
    return media.frame_at(row.file, (frame - 0.5) / info.fps if frame else 0.0, width=THUMB_WIDTH)


def contact_sheet(
    video: Path,
    rows: Sequence[StepRow],
    dest: Path,
    *,
    known: Mapping[tuple[int, int], Image.Image] | None = None,
) -> Path:
    """Write `dest`: a PNG grid of the first frame of every segment of `video`, labelled.

    `known` holds thumbnails already taken, by (step, take); the rest are read from
    `video` in one decoding pass.
    """
    info = media.probe(video)
    marks = ChainView.of(rows).boundaries(info.fps)
    known = known or {}
    missing = [m for m in marks if (m.step, m.take) not in known]
    read = dict(
        zip(
            [(m.step, m.take) for m in missing],
            media.frames_at(video, [m.frame for m in missing], width=THUMB_WIDTH),
            strict=True,
        )
    )
    frames = [known.get((m.step, m.take)) or read[(m.step, m.take)] for m in marks]
    thumb_h = frames[0].height if frames else 1
    font, bold = _font(13), _font(15)
    caption_h = 22 + 16 * CAPTION_LINES
    cell_w, cell_h = THUMB_WIDTH + 12, thumb_h + caption_h + 12
    cols = min(COLUMNS, max(1, len(marks)))
    rows_n = (len(marks) + cols - 1) // cols
    header = 34
    from PIL import Image, ImageDraw

    sheet = Image.new("RGB", (cols * cell_w + 12, header + rows_n * cell_h + 6), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (12, 9),
        f"{video.name}: {info.duration:.2f} s, {len(marks)} segments",
        fill=(240, 240, 240),
        font=bold,
    )
    for n, (mark, frame) in enumerate(zip(marks, frames, strict=True)):
        x = 12 + (n % cols) * cell_w
        y = header + (n // cols) * cell_h
        sheet.paste(frame, (x, y))
        label = f"#{mark.step}  {mark.seconds:.2f} s" + (f"  take {mark.take}" if mark.take > 1 else "")
        if mark.handoff:
            label += "  hand-off"
        draw.text((x, y + thumb_h + 4), label, fill=(255, 220, 90), font=bold)
        for k, line in enumerate(_wrap(mark.prompt or f"({mark.kind})", 34, CAPTION_LINES)):
            draw.text((x, y + thumb_h + 22 + 16 * k), line, fill=(225, 225, 225), font=font)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp.png")
    sheet.save(tmp, format="PNG", compress_level=1)  # a third of level 6's time, at the end of every chain
    os.replace(tmp, dest)
    return dest


# ---------------------------------------------------------------------- report.html

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:22px}h2{font-size:18px;margin-top:36px}
table{border-collapse:collapse;margin:12px 0;width:100%;background:#fff}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}.num{text-align:right;white-space:nowrap}.old{color:#888}
.ok{color:#1a7f37}.bad{color:#b42318}code{font-size:12px}
.sim{background:#fff4ce;border:1px solid #e0b800;padding:8px 12px;font-weight:600}
.made{background:#eef6ff;border:1px solid #8ab4f8;padding:8px 12px}
.next{background:#fdecea;border:1px solid #f5c2bd;padding:8px 12px}
video,img.sheet{max-width:100%;border:1px solid #ccc;background:#000}
"""


def _link(target: Path | None, base: Path, text: str | None = None) -> str:
    if target is None:
        return ""
    rel = Path(os.path.relpath(target.resolve(), base.resolve())).as_posix()
    label = html.escape(text if text is not None else target.name)
    if not target.exists():
        return f'<span class="old" title="not on disk">{label}</span>'
    return f'<a href="{html.escape(rel)}">{label}</a>'


def _num(value: float | None, unit: str = "") -> str:
    return "" if value is None else f"{value:.2f}{unit}".replace(".00", "")


def _step_row(r: StepRow, base: Path, *, current: bool) -> str:
    file = Path(r.file) if r.file else None
    cells = [
        f'<td class="num">{r.idx}</td>',
        f'<td class="num">{r.attempt}{"" if current else " (earlier)"}</td>',
        f"<td>{html.escape(r.kind)}</td>",
        f"<td>{html.escape(r.prompt or '')}</td>",
        f'<td class="num">{_num(r.probed_duration or r.duration, " s")}</td>',
        f'<td class="num">{_num(r.units)}</td>',
        f"<td><code>{html.escape(r.task_id or '')}</code></td>",
        f"<td>{html.escape(r.state)}</td>",
        f"<td>{'pruned' if r.pruned_at else _link(file, base)}</td>",
    ]
    return f'<tr class="{"" if current else "old"}">{"".join(cells)}</tr>'


@dataclass(frozen=True)
class ReportSection:
    """One provider's share of a run, as the report shows it."""

    journal: Journal
    archive_dir: Path
    chains: Sequence[ChainResult]
    provider: str
    address: str
    simulated: bool


#: Earlier reports kept next to the latest one, in a `reports/` folder, and linked from it.
HISTORY_DIR = "reports"


def write_report(sections: Sequence[ReportSection], dest: Path, *, now: dt.datetime | None = None) -> Path:
    """Write the run's report at `dest` (atomically), linking into each section's archive,
    and keep a copy of it in `reports/` beside `dest`, so a run never loses the last one's
    report: the latest report links every earlier one."""
    now = now or dt.datetime.now().astimezone()
    history = dest.parent / HISTORY_DIR
    earlier = sorted(history.glob("report-*.html"), reverse=True) if history.is_dir() else []
    kept = history / f"report-{now:%Y%m%d-%H%M%S}.html"
    n = 1
    while kept.exists():  # two runs within a second: both kept
        n += 1
        kept = history / f"report-{now:%Y%m%d-%H%M%S}-{n}.html"
    archive.write_atomically(kept, _page(sections, kept.parent, now, earlier=[]))
    return archive.write_atomically(dest, _page(sections, dest.parent, now, earlier=[kept, *earlier]))


def _page(sections: Sequence[ReportSection], base: Path, now: dt.datetime, *, earlier: list[Path]) -> str:
    chains = [c for s in sections for c in s.chains]
    fake = bool(sections) and all(s.simulated for s in sections)
    title = "chainer report (simulated)" if fake else "chainer report"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{title}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{title}</h1>",
    ]
    if fake:
        parts.append(
            "<p class='sim'>Simulated: these videos were made by chainer's offline simulator. No "
            "credits were spent, and none of this is a provider's result.</p>"
        )
    parts.append(
        f"<p>Written {now:%Y-%m-%d %H:%M %Z}; {len(chains)} chain{'s' if len(chains) != 1 else ''}, "
        f"{sum(c.state == 'done' for c in chains)} done.</p>"
    )
    for section in sections:
        parts.append(f"<p class='{'sim' if section.simulated else 'made'}'>{_made_by(section)}</p>")
        for c in section.chains:
            parts += _chain_part(section, c, base)
    if earlier:
        links = " · ".join(_link(p, base, p.stem.removeprefix("report-")) for p in earlier)
        parts.append(f"<h2>Earlier reports</h2><p>{links}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _made_by(section: ReportSection) -> str:
    """Who made a section's videos, said so that a simulated result cannot pass for a paid one."""
    names = ", ".join(html.escape(c.chain) for c in section.chains)
    if section.simulated:
        return (
            f"Made by chainer's offline simulator ({html.escape(section.provider)}, imitating that "
            f"provider's API; no credits spent): {names}."
        )
    return (
        f"Made by provider <b>{html.escape(section.provider)}</b> at "
        f"<code>{html.escape(section.address)}</code> (paid): {names}."
    )


def _chain_part(section: ReportSection, c: ChainResult, base: Path) -> list[str]:
    """One chain's heading, outcome, what to do next, video, contact sheet and steps."""
    journal, folder = section.journal, section.archive_dir / c.chain
    cls = "ok" if c.state == "done" else "bad"
    parts = [f"<h2 id='{html.escape(c.chain)}'>{html.escape(c.chain)}</h2>"]
    summary = [f"<span class='{cls}'>{html.escape(c.state)}</span>"]
    if c.duration is not None:
        summary.append(f"{c.duration:.2f} s")
    summary.append(f"{c.units:g} units")
    if c.message:
        summary.append(html.escape(c.message))
    parts.append(f"<p>{' · '.join(summary)}</p>")
    if c.state != "done":
        parts.append(f"<p class='next'><b>What to do next:</b> {html.escape(what_next(c))}</p>")
    if c.output is not None and c.output.exists():
        rel = Path(os.path.relpath(c.output.resolve(), base.resolve())).as_posix()
        parts.append(f"<video controls preload='metadata' src='{html.escape(rel)}'></video>")
        parts.append(f"<p>Final video: {_link(c.output, base)}</p>")
    sheet = folder / archive.CONTACT_SHEET
    if sheet.exists():
        rel = Path(os.path.relpath(sheet.resolve(), base.resolve())).as_posix()
        parts.append(
            f"<p><a href='{html.escape(rel)}'><img class='sheet' src='{html.escape(rel)}' "
            f"alt='contact sheet of {html.escape(c.chain)}'></a></p>"
        )
    if journal.chain(c.chain) is None:
        return parts
    parts.append(
        "<table><tr><th>step</th><th>take</th><th>kind</th><th>prompt</th><th>duration</th>"
        "<th>units</th><th>task id</th><th>state</th><th>archived file</th></tr>"
    )
    earlier: dict[int, list[StepRow]] = {}
    for r in journal.takes(c.chain):
        earlier.setdefault(r.idx, []).append(r)
    for r in journal.steps(c.chain):
        parts.append(_step_row(r, base, current=True))
        parts += [_step_row(o, base, current=False) for o in earlier.get(r.idx, [])]
    parts.append("</table>")
    parts.append(f"<p>Archive: {_link(folder, base, str(folder.name) + '/')} · ")
    parts.append(f"{_link(folder / 'manifest.json', base)}</p>")
    return parts
