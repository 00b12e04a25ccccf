"""The contact sheet and report.html a person opens after a run."""

from __future__ import annotations

import html.parser
import json
from pathlib import Path
from urllib.parse import unquote

from helpers import provider_env
from PIL import Image, ImageChops, ImageStat
from typer.testing import CliRunner

from chainer import media, report
from chainer.chain import ChainView
from chainer.cli import app
from chainer.journal import Journal
from chainer.simulator import Simulator


class Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("href", "src") and v and not v.startswith("#")]


def run(sim: Simulator, tmp_path: Path, *storyboards: Path) -> str:
    result = CliRunner().invoke(
        app,
        [
            "run",
            *map(str, storyboards),
            "--state-dir",
            str(tmp_path / "state"),
            "--archive-dir",
            str(tmp_path / "archive"),
            "--report",
            str(tmp_path / "site" / "report.html"),
        ],
        env=provider_env(sim),
    )
    assert result.exit_code in (0, 1), result.output
    return result.output


def test_report_links_work_from_disk_and_sheet_shows_each_boundary(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(fail_marker="FORBIDDEN")
    good = tmp_path / "harbour.yaml"
    good.write_text(
        "name: harbour\nstart: {text2video: {prompt: A quiet harbour, model: kling-v1-6}}\n"
        "segments:\n  - prompt: Boats drift out\n  - prompt: Gulls circle & call <loudly>\n"
        "  - prompt: The fog lifts\n  - prompt: Sun on the water\n  - prompt: Evening comes\n"
        f"output: {tmp_path / 'out' / 'harbour.mp4'}\n"
    )
    bad = tmp_path / "refused.yaml"
    bad.write_text(
        "name: refused\nstart: {text2video: {prompt: A road, model: kling-v1-6}}\n"
        f"segments: [{{prompt: FORBIDDEN thing}}]\noutput: {tmp_path / 'out' / 'refused.mp4'}\n"
    )
    output = run(sim, tmp_path, good, bad)
    page = tmp_path / "site" / "report.html"
    assert "1 of 2 chains done. Report:" in " ".join(output.split())

    text = page.read_text()
    parser = Links()
    parser.feed(text)
    # Every link is relative and points at a file that exists: the page works from disk.
    assert parser.links
    for link in parser.links:
        assert not link.startswith(("/", "http:", "https:", "file:")), link
        assert (page.parent / unquote(link)).exists(), link
    assert any(link.endswith("harbour.mp4") for link in parser.links)
    assert any(link.endswith("contact-sheet.png") for link in parser.links)
    # The steps table: prompts (escaped), task ids and units from the journal; the failure shown.
    assert "Gulls circle &amp; call &lt;loudly&gt;" in text
    with Journal(tmp_path / "state" / "journal-kling.sqlite") as journal:
        for row in journal.steps("harbour"):
            assert row.task_id and f"<code>{row.task_id}</code>" in text
        rows = journal.steps("harbour")
    assert "refused" in text and "failed" in text

    # The contact sheet: one thumbnail per segment boundary, each the first frame that step added.
    sheet = Image.open(tmp_path / "archive" / "harbour" / "contact-sheet.png").convert("RGB")
    video = tmp_path / "out" / "harbour.mp4"
    marks = ChainView.of(rows).boundaries(media.probe(video).fps)
    assert [m.step for m in marks] == [0, 1, 2, 3, 4, 5]
    frames = media.frames_at(video, [m.frame for m in marks], width=report.THUMB_WIDTH)
    th = frames[0].height
    cell_w, cell_h = report.THUMB_WIDTH + 12, th + 22 + 16 * report.CAPTION_LINES + 12
    assert sheet.size == (4 * cell_w + 12, 34 + 2 * cell_h + 6)
    for n, frame in enumerate(frames):
        x, y = 12 + (n % 4) * cell_w, 34 + (n // 4) * cell_h
        thumb = sheet.crop((x, y, x + report.THUMB_WIDTH, y + th))
        same = sum(ImageStat.Stat(ImageChops.difference(thumb, frame)).mean) / 3
        other = sum(ImageStat.Stat(ImageChops.difference(thumb, frames[(n + 1) % len(frames)])).mean) / 3
        assert same < 1.0 < other, (n, same, other)
    # each boundary is where the previous step's video ended
    assert [m.frame for m in marks[1:]] == [round((r.probed_duration or 0) * 24) for r in rows[:-1]]
    assert json.loads((tmp_path / "archive" / "harbour" / "manifest.json").read_text())["contact_sheet"] == (
        "contact-sheet.png"
    )


def test_a_contact_sheet_that_cannot_be_made_does_not_fail_the_chain(
    sim: Simulator, tmp_path: Path, open_session, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import anyio

    from chainer import errors, load_plan

    def broken(*args: object, **kwargs: object) -> None:
        raise errors.MediaError("ffmpeg could not read frames", command=["ffmpeg", "-i", "x"], stderr="boom")

    monkeypatch.setattr(report, "thumbnail", broken)
    monkeypatch.setattr(report, "contact_sheet", broken)
    sb = tmp_path / "sheetless.yaml"
    sb.write_text(
        "name: sheetless\nstart: {text2video: {prompt: A road, model: kling-v1-6}}\n"
        f"segments: [{{prompt: onwards}}]\noutput: {tmp_path / 'out.mp4'}\n"
    )
    events: list[str] = []

    async def main() -> object:
        async with open_session(sim, state_dir=tmp_path / "s", archive_dir=tmp_path / "a") as s:
            return await s.run(load_plan(sb), on_event=lambda e: events.append(f"{e.state}: {e.message}"))

    result = anyio.run(main)
    assert result.state == "done" and (tmp_path / "out.mp4").is_file()  # type: ignore[attr-defined]
    assert not (tmp_path / "a" / "sheetless" / "contact-sheet.png").exists()
    assert any(e.startswith("warning: no contact sheet: ffmpeg could not read frames") for e in events)
    assert sum(e.startswith("warning: no contact-sheet picture yet") for e in events) == 2
