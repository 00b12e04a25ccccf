"""`chainer sim`: the offline simulator served in the foreground."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from .. import simulator
from ..simulator import SimConfig
from .common import app, err, out

# ---- chainer sim's options
SimHost = Annotated[str, typer.Option(help="Address to listen on (loopback by default).")]
SimPort = Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")]
SimDialect = Annotated[
    Literal["official", "proxy"],
    typer.Option(help="official (JWT auth) or proxy (bearer key under --path-prefix)."),
]
SimPathPrefix = Annotated[
    str, typer.Option("--path-prefix", help="Path prefix for the API routes, e.g. /kling.")
]
SimTaskTimeScale = Annotated[
    float,
    typer.Option(min=0.0001, help="Task time as a fraction of Kling's real minutes (1.0 = real time)."),
]
SimConcurrency = Annotated[
    int, typer.Option(min=1, help="Tasks the account may have in flight; more get code 1303.")
]
SimWidth = Annotated[int, typer.Option(min=64, help="Width of the videos made.")]
SimHeight = Annotated[int, typer.Option(min=64, help="Height of the videos made.")]
SimSeed = Annotated[int, typer.Option(help="Random seed (task ids, timings, extension lengths).")]
SimRequireParentTaskId = Annotated[
    bool, typer.Option(help="Proxy behaviour: video-extend needs the parent task_id.")
]
SimPromptMaxChars = Annotated[
    int, typer.Option(min=1, help="Longest prompt accepted (2500 on Kling, 500 on CometAPI).")
]
SimRefuseV15 = Annotated[bool, typer.Option(help="Refuse to extend kling-v1-5 videos, as some proxies do.")]
SimExternalIdLookup = Annotated[
    bool,
    typer.Option(
        help="Answer lookups by external_task_id (--no-external-id-lookup: like proxies that cannot)."
    ),
]
SimIgnoreExternalTaskId = Annotated[
    bool,
    typer.Option(
        help="Accept external_task_id and throw it away (never stored, echoed or found), as some "
        "proxies do: a test of chainer's own lookup check."
    ),
]
SimLoseCreateRate = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Fault: fraction of creates whose answer is lost (502) after the task was made.",
    ),
]
SimErrorRate = Annotated[
    float,
    typer.Option(min=0.0, max=1.0, help="Fault: fraction of API requests answered 500 / code 5000."),
]
SimRateLimit = Annotated[
    float | None,
    typer.Option(min=0.001, help="API requests per second; more get 429 / code 1302 with Retry-After."),
]
SimUnitBudget = Annotated[
    float | None,
    typer.Option(min=0.0, help="Units in the resource pack; a create past it gets 429 / code 1102."),
]
SimTruncateDownloadRate = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Fault: fraction of downloads cut off half-way.")
]
SimDownloadBytesPerS = Annotated[
    float, typer.Option(min=0.0, help="Serve downloads at most this fast (0: unlimited).")
]
SimLatency = Annotated[
    list[str] | None,
    typer.Option(help="Extra delay per endpoint, ENDPOINT=SECONDS (create, query, download); repeatable."),
]
SimConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML or JSON file of simulator settings (the field names of these options, e.g. "
        "time_scale, lose_create_rate, latency_s); when given, it replaces the option values.",
    ),
]
SimAdmin = Annotated[
    bool, typer.Option(help="Serve the inspection API under /_sim/ (creates, stats, clock).")
]
SimDataDir = Annotated[Path | None, typer.Option(help="Where videos are kept (default: a temporary folder).")]
SimSslCertfile = Annotated[
    Path | None,
    typer.Option("--ssl-certfile", help="Serve https with this PEM certificate (with --ssl-keyfile)."),
]
SimSslKeyfile = Annotated[
    Path | None, typer.Option("--ssl-keyfile", help="The PEM private key of --ssl-certfile.")
]


@app.command(short_help="Serve the offline Kling simulator on loopback.")
def sim(
    host: SimHost = "127.0.0.1",
    port: SimPort = 8765,
    dialect: SimDialect = "official",
    path_prefix: SimPathPrefix = "",
    time_scale: SimTaskTimeScale = 1.0,
    concurrency: SimConcurrency = 5,
    width: SimWidth = 640,
    height: SimHeight = 360,
    seed: SimSeed = 0,
    require_parent_task_id: SimRequireParentTaskId = False,
    prompt_max_chars: SimPromptMaxChars = 2500,
    refuse_v1_5: SimRefuseV15 = False,
    external_id_lookup: SimExternalIdLookup = True,
    ignore_external_task_id: SimIgnoreExternalTaskId = False,
    lose_create_rate: SimLoseCreateRate = 0.0,
    error_rate: SimErrorRate = 0.0,
    rate_limit: SimRateLimit = None,
    unit_budget: SimUnitBudget = None,
    truncate_download_rate: SimTruncateDownloadRate = 0.0,
    download_bytes_per_s: SimDownloadBytesPerS = 0.0,
    latency: SimLatency = None,
    config_file: SimConfigFile = None,
    admin: SimAdmin = True,
    data_dir: SimDataDir = None,
    ssl_certfile: SimSslCertfile = None,
    ssl_keyfile: SimSslKeyfile = None,
) -> None:
    """Serve the offline Kling simulator in the foreground until Ctrl-C.

    Official dialect credentials: KLING_ACCESS_KEY=sim-access-key,
    KLING_SECRET_KEY=sim-secret-key-0123456789abcdef0123. Proxy dialect: KLING_API_KEY=sim-api-key.
    Admin API (with --admin): GET /_sim/creates, GET /_sim/stats, POST /_sim/advance?seconds=N.
    """
    settings = dict(
        dialect=dialect,
        path_prefix=path_prefix,
        time_scale=time_scale,
        concurrency=concurrency,
        width=width,
        height=height,
        seed=seed,
        send_parent_task_id=require_parent_task_id,
        prompt_max_chars=prompt_max_chars,
        extend_v1_5=not refuse_v1_5,
        lose_create_rate=lose_create_rate,
        error_rate=error_rate,
        task_lookup="external_id" if external_id_lookup else "list",
        ignore_external_task_id=ignore_external_task_id,
        rate_limit_per_s=rate_limit,
        unit_budget=unit_budget,
        truncate_download_rate=truncate_download_rate,
        download_bytes_per_s=download_bytes_per_s,
        latency_s=_latencies(latency or []),
    )
    config = _sim_config_file(config_file) if config_file is not None else _checked(settings, None)
    if bool(ssl_certfile) != bool(ssl_keyfile):
        err.print("--ssl-certfile and --ssl-keyfile go together", markup=False)
        raise typer.Exit(2)
    _serve(config, data_dir, host, port, admin, (ssl_certfile, ssl_keyfile))


def _serve(
    config: SimConfig,
    data_dir: Path | None,
    host: str,
    port: int,
    admin: bool,
    tls: tuple[Path | None, Path | None],
) -> None:
    """Serve until Ctrl-C; the URL is printed only once the port is bound, and a port that
    cannot be bound is a clean exit 2 saying what to pick instead."""
    try:
        simulator.serve_forever(  # the server's modules load here, not with every command
            config,
            data_dir=data_dir,
            host=host,
            port=port,
            admin=admin,
            ssl_certfile=tls[0],
            ssl_keyfile=tls[1],
            on_listening=lambda url: out.print(
                f"Kling simulator ({config.dialect}) on {url}{config.path_prefix}", markup=False
            ),
        )
    except OSError as exc:
        taken = exc.errno == errno.EADDRINUSE
        err.print(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            + (
                "; another program (another `chainer sim`?) has that port: pick another with --port, "
                "or --port 0 for a free one"
                if taken
                else "; check --host (an address of this machine, e.g. 127.0.0.1)"
            ),
            markup=False,
        )
        raise typer.Exit(2) from None


def _latencies(items: list[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    for item in items:
        endpoint, _, seconds = item.partition("=")
        try:
            if endpoint not in ("create", "query", "download"):
                raise ValueError(endpoint)
            found[endpoint] = float(seconds)
        except ValueError:
            err.print(f"--latency {item!r}: expected create=S, query=S or download=S", markup=False)
            raise typer.Exit(2) from None
    return found


def _sim_config_file(path: Path) -> SimConfig:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        err.print(f"{path}: cannot read it: {exc.strerror or exc}", markup=False)
    except yaml.YAMLError as exc:
        err.print(f"{path}: not YAML/JSON: {exc}", markup=False)
    else:
        if data is None or isinstance(data, dict):
            return _checked(data or {}, path)
        err.print(f"{path}: expected a mapping of settings, found {type(data).__name__}", markup=False)
    raise typer.Exit(2)


def _checked(settings: dict[str, Any], path: Path | None) -> SimConfig:
    """The simulator's settings validated; each problem named by its option (or its key in
    the --config file), then exit 2."""
    from pydantic import ValidationError

    try:
        return SimConfig.model_validate(settings)
    except ValidationError as exc:
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"]) or "settings"
            where = f"{path}: {key}" if path is not None else f"--{key.replace('_', '-')}"
            err.print(f"{where}: {e['msg']}", markup=False)
    raise typer.Exit(2)
