"""Where simulated results go, and when the embedded simulator may be used at all.

A run with no credentials uses the offline simulator, so that a newcomer sees a video
without an account. The same rule would let a cron job that lost its environment
replace paid results with simulated ones. So:

- the simulator is chosen without being asked only where nothing was ever run for real
  (no journal of a real provider with a chain in the state folder);
- a chain with real history is never run by the simulator, even when asked;
- simulated results never share a path with real ones: `out/x.mp4` becomes
  `out/x.simulated.mp4`, the archive `archive/` becomes `archive-simulated/` (and its
  mirror `s3://b/archive` becomes `s3://b/archive-simulated`), the run summary
  `last-run.json` becomes `last-run.simulated.json`.
"""

from __future__ import annotations

from pathlib import Path

from .journal import Journal

#: Journals of the embedded simulator are named journal-simulator*.sqlite (one per profile imitated).
SIMULATOR_PROVIDER = "simulator"
MARK = "simulated"


def is_simulated_provider(name: str) -> bool:
    """Whether a journal's provider name is the embedded simulator's (`simulator`, `simulator-NAME`)."""
    return name == SIMULATOR_PROVIDER or name.startswith(SIMULATOR_PROVIDER + "-")


def simulator_name(profile: str) -> str:
    """The provider name the embedded simulator uses when it imitates `profile`."""
    return SIMULATOR_PROVIDER if profile == "kling" else f"{SIMULATOR_PROVIDER}-{profile}"


def is_simulated_journal(path: Path) -> bool:
    return is_simulated_provider(path.name.removeprefix("journal-").removesuffix(".sqlite"))


def output_path(path: Path) -> Path:
    """`out/x.mp4` -> `out/x.simulated.mp4` (already simulated paths stay as they are)."""
    if path.stem.endswith("." + MARK):
        return path
    return path.with_name(f"{path.stem}.{MARK}{path.suffix}")


def archive_root(path: Path) -> Path:
    """`archive` -> `archive-simulated`: a sibling, so no chain's folder can collide with it."""
    if path.name.endswith("-" + MARK):
        return path
    return path.with_name(f"{path.name}-{MARK}")


def archive_url(url: str) -> str:
    """`s3://bucket/archive` -> `s3://bucket/archive-simulated` (the mirror, kept apart too)."""
    url = url.rstrip("/")
    return url if url.endswith("-" + MARK) else f"{url}-{MARK}"


def summary_path(path: Path) -> Path:
    """`last-run.json` -> `last-run.simulated.json`."""
    return output_path(path)


def real_history(state_dir: Path) -> dict[str, list[str]]:
    """The chains run for real from `state_dir`: {journal file name: [chain names]}."""
    found: dict[str, list[str]] = {}
    for path in sorted(state_dir.glob("journal-*.sqlite")):
        if is_simulated_journal(path):
            continue
        with Journal(path) as journal:
            names = [c.name for c in journal.chains()]
        if names:
            found[path.name] = names
    return found
