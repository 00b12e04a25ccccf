"""What every `chainer` command shares: the app, the consoles, common options, errors to exit codes."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console
from typer.core import TyperGroup

from .. import errors, profiles, simulated
from ..callbacks import CallbackHub
from ..journal import is_database_url
from ..session import Session
from ..simulator import SimConfig

#: The name chainer is installed under (the import package and the command are `chainer`).
DISTRIBUTION = "kling-chainer"

# ---- options several commands share (one definition each)
BaseUrl = Annotated[
    str | None,
    typer.Option("--base-url", help="Provider base URL; overrides KLING_BASE_URL and the profile."),
]
PathPrefix = Annotated[
    str | None,
    typer.Option(
        "--path-prefix",
        help="Path prefix in front of /v1/... (proxies often use /kling); overrides KLING_PATH_PREFIX.",
    ),
]
StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Folder for the journals (and the offline simulator's files).")
]
ArchiveDir = Annotated[
    Path | None,
    typer.Option(
        "--archive-dir",
        help="Folder where every result is archived, one sub-folder per chain "
        "(default: the one STATE_DIR recorded at its first run, else archive/ beside STATE_DIR).",
        show_default=False,
    ),
]
ArchiveUrl = Annotated[
    str | None,
    typer.Option(
        "--archive-url",
        envvar="CHAINER_ARCHIVE_URL",
        help="Also keep the archive at this fsspec URL (e.g. s3://bucket/prefix), synced after every step.",
    ),
]
CallbackUrl = Annotated[
    str | None,
    typer.Option(
        "--callback-url",
        envvar="CHAINER_CALLBACK_URL",
        help="Public URL where the provider can POST task updates (a reverse proxy or tunnel to "
        "--listen); chainer adds a secret per-run token to its path. Polling stays on as the "
        "safety net; without it, chainer only polls.",
    ),
]
Listen = Annotated[
    str,
    typer.Option(
        "--listen", envvar="CHAINER_CALLBACK_LISTEN", help="Where the callback receiver listens (HOST:PORT)."
    ),
]
JournalUrl = Annotated[
    str | None,
    typer.Option(
        "--journal",
        envvar="CHAINER_JOURNAL",
        help="A journal on PostgreSQL (postgresql://USER@HOST/DB) shared by a team's workers, instead "
        "of the journal files in STATE_DIR.",
    ),
]
SimTimeScale = Annotated[
    float,
    typer.Option(
        "--sim-time-scale",
        envvar="CHAINER_SIM_TIME_SCALE",
        min=0.0001,
        help="Offline simulator only: task time as a fraction of Kling's real minutes.",
    ),
]

#: The order `chainer --help` lists the commands in: the everyday ones first.
COMMAND_ORDER = (
    *("run", "resume", "status", "plan", "validate"),
    *("submit", "worker"),
    *("archive", "adopt", "providers", "schema", "sim"),
)


#: How a value is named in help, from typer's own label for its type (`<str>`, `<list[Path]>`).
_METAVARS = {"path": "PATH", "int": "N", "float": "NUMBER", "str": "TEXT"}


def _plain_metavars(command: Any, ctx: Any) -> None:
    """Name every option's value the way click does (PATH, N, TEXT) and arguments by their name."""
    for param in command.params:
        if param.metavar is None and not getattr(param, "is_flag", False):
            if param.param_type_name == "argument":
                param.metavar = param.name.upper()
                # typer prints an argument's type label next to its name whatever its metavar
                param.display_type_rich = lambda ctx: None
            else:
                label = param.display_type(ctx).strip("<>").removeprefix("list[").rstrip("]")
                param.metavar = _METAVARS.get(label.split()[0].lower(), label.upper())
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub, ctx)


class _Commands(TyperGroup):
    """The root group: commands listed in COMMAND_ORDER, values named plainly in help."""

    def list_commands(self, ctx: Any) -> list[str]:
        known = super().list_commands(ctx)
        return sorted(known, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(known))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _plain_metavars(command, ctx)
        return command


app = typer.Typer(
    name="chainer",
    cls=_Commands,
    help=(
        "Turn a storyboard into a multi-minute AI video by chaining Kling video-extend calls.\n\n"
        "Credentials come from the environment: KLING_ACCESS_KEY + KLING_SECRET_KEY for the official "
        "API, or KLING_API_KEY + KLING_BASE_URL for a proxy. With none set, chainer runs against its "
        "built-in offline simulator and spends no credits."
    ),
    no_args_is_help=True,
    # --install-completion / --show-completion for bash, zsh, fish and PowerShell.
    add_completion=True,
    pretty_exceptions_enable=False,
    # click's own help layout: it wraps to the terminal (80 columns too) without cutting option
    # names, and shows types as TEXT/INTEGER rather than rich's <str>/<list[str]>.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def version() -> str:
    """The installed distribution's version (kling-chainer: `chainer` on PyPI is another project)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        out.print(f"chainer {version()}", markup=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """The options of `chainer` itself (the commands are registered by their modules)."""


def fail(exc: errors.ChainerError) -> typer.Exit:
    print_error(exc)
    return typer.Exit(exc.exit_code)


def print_error(exc: errors.ChainerError) -> None:
    """An error as the user reads it: its problems, or its message and notes."""
    if isinstance(exc, errors.StoryboardError):
        for problem in exc.problems:
            err.print(str(problem), markup=False)
        err.print(f"{len(exc.problems)} problem(s); nothing was sent.", style="red")
    else:
        err.print(f"error: {exc}", style="red", markup=False)
        for note in getattr(exc, "__notes__", []):
            err.print(f"  ({note})", markup=False)


def allow_open_files() -> None:
    """Raise the soft limit on open files to the hard one: every chain of a batch holds its
    lock file open, and a 1,000-storyboard batch would pass the usual soft limit of 1,024."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not on this platform, or not allowed: keep it
        pass


def run_async(main: Callable[[], Awaitable[int]]) -> None:
    """Run a command's async body; errors become their exit codes, Ctrl-C exits 130."""
    allow_open_files()
    try:
        code = anyio.run(main)
    except errors.ChainerError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        err.print("Interrupted. Everything sent so far is in the journal; run the same command to resume.")
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


def where(
    state_dir: Path,
    archive_dir: Path | None,
    archive_url: str | None,
    base_url: str | None,
    path_prefix: str | None,
    sim_time_scale: float,
    journal: str | None = None,
) -> dict[str, Any]:
    """The Session.open settings every command that talks to a provider takes from its flags."""
    return {
        "journal": journal_url(journal),
        "state_dir": state_dir,
        "archive_dir": archive_dir,
        "archive_url": archive_url,
        "base_url": base_url,
        "path_prefix": path_prefix,
        "sim_config": SimConfig(time_scale=sim_time_scale, **sim_size()),
    }


def sim_size() -> dict[str, int]:
    """The embedded simulator's video size from CHAINER_SIM_SIZE (WIDTHxHEIGHT), if set:
    a smaller one renders a long rehearsal faster (Kling's own is 1280x720 and up)."""
    value = os.environ.get("CHAINER_SIM_SIZE", "").strip()
    if not value:
        return {}
    width, sep, height = value.lower().partition("x")
    if not (
        sep
        and width.isdigit()
        and height.isdigit()
        and 16 <= int(width) <= 4096
        and 16 <= int(height) <= 4096
    ):
        raise errors.ConfigError(f"CHAINER_SIM_SIZE={value!r}: expected WIDTHxHEIGHT, e.g. 320x180")
    return {"width": int(width) // 2 * 2, "height": int(height) // 2 * 2}  # even: H.264 wants it


def journal_url(journal: str | None) -> str | None:
    """--journal as given, or a clear error for what is not a PostgreSQL URL."""
    if journal is not None and not is_database_url(journal):
        raise errors.ConfigError(
            f"--journal {journal!r}: expected a PostgreSQL URL (postgresql://USER@HOST:PORT/DB); "
            "journal files live in --state-dir"
        )
    return journal


@asynccontextmanager
async def journal_session(path: Path | str, profile: str, **common: Any) -> AsyncIterator[Session]:
    """A session on the provider profile a journal's chains were made with (the simulator
    for a simulated journal, the credentials for a real one), or ConfigError saying what is off."""
    if isinstance(path, str):  # a journal on a server: the credentials set now reach its provider
        async with Session.open(**{**common, "journal": path}, profile=profiles.get(profile)) as session:
            yield session
        return
    async with Session.open(
        **common, profile=profiles.get(profile), simulate=simulated.is_simulated_journal(path)
    ) as session:
        if Path(session.journal.where).resolve() != path.resolve():
            raise errors.ConfigError(
                f"{path.name}: its chains were made with another provider than the credentials set now "
                f"reach ({session.provider.name}); set that provider's credentials"
            )
        yield session


def show_retry(exc: Exception, attempt: int, wait: float | None) -> None:
    """Every retry of a request is shown (the run's events do this for `chainer run`)."""
    asked = f"; waiting {wait:g} s as the provider asked" if wait is not None else ""
    err.print(f"retry, attempt {attempt}: {exc}{asked}; trying again", markup=False)


async def receive_callbacks(
    stack: AsyncExitStack, callback_url: str | None, listen: str, talk: Console
) -> CallbackHub | None:
    """The run's callback receiver, serving until `stack` closes (None without a URL)."""
    if not callback_url:
        return None
    from .. import receiver  # uvicorn and starlette: only for a run that listens

    hub = await stack.enter_async_context(receiver.receiving(callback_url, listen))
    talk.print(
        f"Callbacks: the provider posts task updates to {callback_url.rstrip('/')}/<a token for this "
        f"run>, received on {listen}; polling stays on for any that do not arrive.",
        markup=False,
    )
    return hub
