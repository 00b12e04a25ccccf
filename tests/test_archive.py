"""The archive: results saved before the provider deletes them, and losses said out loud."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import CHAINER, provider_env
from typer.testing import CliRunner

from chainer import archive
from chainer.cli import app
from chainer.journal import Journal

DAY = 86400


def storyboard(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nstart: {{text2video: {{prompt: '{name}'}}}}\nsegments: [{{prompt: more}}]\n"
        f"output: {folder / name}.mp4\n"
    )
    return path


def killed_mid_download(sim, workdir: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    """Run a chain until its first result is made, then die while downloading it."""
    storyboard(workdir, name)
    proc = subprocess.run(
        [CHAINER, "run", f"{name}.yaml"],
        cwd=workdir,
        env=provider_env(sim, CHAINER_FAILPOINT="mid-download@0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr


def cli(sim, workdir: Path, *args: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        app,
        [
            *args,
            "--state-dir",
            str(workdir / ".chainer"),
            *(["--archive-dir", str(workdir / "archive")] if args[0] == "archive" else []),
        ],
        env=provider_env(sim),
    )
    return result.exit_code, " ".join(result.output.split())


def test_expiry_is_warned_archived_in_time_and_losses_are_reported(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory()
    sim.state.advance(-25 * DAY)  # the provider's clock: this video is made 25 days ago
    killed_mid_download(sim, tmp_path, "early")
    code, output = cli(sim, tmp_path, "status")
    assert code == 1
    assert "step 0: not archived, deleted in 4 d" in output and "chainer archive" in output

    creates = len(sim.state.creates)
    code, output = cli(sim, tmp_path, "archive")
    assert code == 0, output
    assert "early step 0: saved" in output
    assert len(sim.state.creates) == creates, "archiving never creates tasks"
    with Journal(tmp_path / ".chainer" / "journal-kling.sqlite") as journal:
        row = journal.steps("early")[0]
        assert row.state == "downloaded" and Path(row.file or "").is_file()
    assert "not archived" not in cli(sim, tmp_path, "status")[1]

    sim.state.advance(-6 * DAY)  # this one is made 31 days ago
    killed_mid_download(sim, tmp_path, "late")
    sim.state.advance(31 * DAY)  # back to now: the provider has deleted it
    code, output = cli(sim, tmp_path, "status")
    assert code == 1 and "step 0: not archived and deleted by the provider on" in output
    code, output = cli(sim, tmp_path, "archive")
    assert code == 1
    assert "late step 0: LOST: deleted by the provider on" in output and "1203" in output
    assert not list((tmp_path / "archive" / "late").glob("*.mp4")), "nothing half-written at a final path"


def test_account_sweep_saves_videos_chainer_did_not_make(sim_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_sim_conformance import Api

    sim = sim_factory()
    api = Api(sim, "official")
    outside = [api.video({"prompt": f"made elsewhere {n}"}) for n in range(2)]
    ext = api.create("video-extend", api.extend_body(outside[0]))[1]["data"]["task_id"]
    api.done("video-extend", ext)
    storyboard(tmp_path, "mine")  # a chain of chainer's own: its videos must not be swept twice
    assert (
        CliRunner()
        .invoke(
            app,
            [
                "run",
                str(tmp_path / "mine.yaml"),
                "--state-dir",
                str(tmp_path / ".chainer"),
                "--archive-dir",
                str(tmp_path / "archive"),
            ],
            env=provider_env(sim),
        )
        .exit_code
        == 0
    )
    code, output = cli(sim, tmp_path, "archive", "--account")
    assert code == 0, output
    manifest = json.loads((tmp_path / "archive" / "_account" / "manifest.json").read_text())
    swept = {v["video_id"] for v in manifest["videos"]}
    expected = {t["task_result"]["videos"][0]["id"] for t in outside} | {sim.state.tasks[ext].video_id}
    assert swept == expected
    for v in manifest["videos"]:
        assert (tmp_path / "archive" / "_account" / v["file"]).stat().st_size == v["size"]
        assert v["expires_at"] and v["sha256"]
    again = cli(sim, tmp_path, "archive", "--account")
    assert again[0] == 0 and "0 result(s) saved" in again[1], "a second sweep finds nothing new"


def test_keep_final_prunes_intermediate_results_and_never_refetches_them(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    path = tmp_path / "lean.yaml"
    path.write_text(
        "name: lean\nstart: {text2video: {prompt: p}}\nsegments: [{prompt: a}, {prompt: b}]\n"
        f"archive: {{keep: final}}\noutput: {tmp_path / 'lean.mp4'}\n"
    )
    args = [
        "run",
        str(path),
        "--state-dir",
        str(tmp_path / ".chainer"),
        "--archive-dir",
        str(tmp_path / "archive"),
    ]
    assert CliRunner().invoke(app, args, env=provider_env(sim)).exit_code == 0
    folder = tmp_path / "archive" / "lean"
    kept = sorted(folder.glob("*.mp4"))
    assert [p.name[:3] for p in kept] == ["002"], "only the final video stays"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["pruned_at"] is not None for s in manifest["steps"]] == [True, True, False]
    assert all(s["sha256"] for s in manifest["steps"]), "what was pruned stays described"
    assert manifest["final_video"] == kept[0].name
    requests = sum(sim.state.requests.values())
    assert CliRunner().invoke(app, args, env=provider_env(sim)).exit_code == 0
    assert cli(sim, tmp_path, "archive")[0] == 0
    assert sum(sim.state.requests.values()) == requests, (
        "pruned results are neither re-created nor re-fetched"
    )
    assert sorted(folder.glob("*.mp4")) == kept


def test_archive_mirrored_to_an_fsspec_url(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    storyboard(tmp_path, "mirrored")
    mirror = tmp_path / "elsewhere"
    args = [
        "run",
        str(tmp_path / "mirrored.yaml"),
        "--state-dir",
        str(tmp_path / ".chainer"),
        "--archive-dir",
        str(tmp_path / "archive"),
        "--archive-url",
        f"file://{mirror}",
    ]
    assert CliRunner().invoke(app, args, env=provider_env(sim)).exit_code == 0
    local = tmp_path / "archive" / "mirrored"
    copied = {p.name: p.read_bytes() for p in (mirror / "mirrored").iterdir()}
    assert set(copied) == {p.name for p in local.iterdir() if archive.is_mirrored(p)}
    for name, data in copied.items():
        assert hashlib.sha256(data).digest() == hashlib.sha256((local / name).read_bytes()).digest()
    (mirror / "mirrored" / sorted(copied)[0]).unlink()  # lost on the far side: `archive` puts it back
    code, _ = cli(sim, tmp_path, "archive", "--archive-url", f"file://{mirror}")
    assert code == 0 and (mirror / "mirrored" / sorted(copied)[0]).read_bytes() == copied[sorted(copied)[0]]


def test_archive_mirrored_to_s3_on_a_loopback_server(sim, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A real S3 API (moto's server on loopback), through s3fs as a user's `s3://` URL goes:
    the dev extra installs both, so this never skips."""
    import hashlib

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3_env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        }
        for key, value in s3_env.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="videos")
        storyboard(tmp_path, "mirrored")
        result = CliRunner().invoke(
            app,
            [
                "run",
                str(tmp_path / "mirrored.yaml"),
                "--state-dir",
                str(tmp_path / ".chainer"),
                "--archive-dir",
                str(tmp_path / "archive"),
                "--archive-url",
                "s3://videos/studio",
            ],
            env={**provider_env(sim), **s3_env},
        )
        assert result.exit_code == 0, result.output
        local = tmp_path / "archive" / "mirrored"
        listed = s3.list_objects_v2(Bucket="videos", Prefix="studio/mirrored/")["Contents"]
        remote = {o["Key"].rsplit("/", 1)[1]: o["Size"] for o in listed}
        expected = {p.name: p.stat().st_size for p in local.iterdir() if archive.is_mirrored(p)}
        assert remote == expected and len(expected) == 4  # 2 videos, the manifest, the contact sheet
        final = sorted(p for p in local.glob("*.mp4"))[-1]
        body = s3.get_object(Bucket="videos", Key=f"studio/mirrored/{final.name}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(final.read_bytes()).hexdigest()
    finally:
        server.stop()


def test_the_mirror_never_copies_a_download_in_progress(tmp_path: Path) -> None:
    names = ["000-v.mp4", "manifest.json", "contact-sheet.png", "001-w.mp4.part", "001-w.mp4.part.json"]
    names += ["002-x.mp4.rejected", ".manifest.json.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir() if archive.is_mirrored(p)) == [
        "000-v.mp4",
        "contact-sheet.png",
        "manifest.json",
    ]


def test_writers_of_one_file_never_rename_each_others_temp_file(tmp_path: Path) -> None:
    """Two runs sharing a state folder each end by writing last-run.json: a temp file of one
    shared name let one writer rename the other's away (a soak run caught it)."""
    from concurrent.futures import ThreadPoolExecutor

    target = tmp_path / "last-run.json"

    def write(writer: int) -> None:
        for n in range(40):
            archive.write_atomically(target, f"{writer}:{n}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))  # re-raises a writer's error
    assert target.read_text().endswith(":39")
    assert [p.name for p in tmp_path.iterdir()] == ["last-run.json"]
