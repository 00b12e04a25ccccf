"""`chainer providers` and `chainer providers check`."""

from __future__ import annotations

from typing import Annotated

import anyio
import typer

from .. import balance, errors, profiles
from ..provider.client import KlingClient
from .common import app, fail, out

providers_app = typer.Typer(
    help="Provider profiles: what differs between Kling and the proxies (list; `check NAME`).",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(providers_app, name="providers", short_help="List provider profiles; `check NAME` tests one.")


@providers_app.callback()
def providers(ctx: typer.Context) -> None:
    """List the provider profiles (built in, and from the user's providers.toml) and their settings."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        found = profiles.registry()
    except errors.ChainerError as exc:
        raise fail(exc) from None
    for p in found.values():
        out.print(f"{p.name}: {p.description}", markup=False)
        settings = {
            "base_url": p.base_url or "(set KLING_BASE_URL)",
            "path_prefix": p.path_prefix or "(none)",
            "auth": "JWT from KLING_ACCESS_KEY + KLING_SECRET_KEY" if p.auth == "jwt" else "KLING_API_KEY",
            "send_parent_task_id": p.send_parent_task_id,
            "prompt_max_chars": p.prompt_max_chars,
            "negative_prompt_max_chars": p.negative_prompt_max_chars,
            "extend_fields": ", ".join(p.extend_fields),
            "extend_v1_5": p.extend_v1_5,
            "task_lookup": p.task_lookup,
            "concurrency": p.concurrency,
            "unit_price": f"{p.unit_price:g} {p.currency}" if p.unit_price is not None else "(not set)",
        }
        for key, value in settings.items():
            out.print(f"    {key} = {str(value).lower() if isinstance(value, bool) else value}", markup=False)
    out.print(f"User profiles: {profiles.user_file()}", markup=False)


@providers_app.command("check")
def providers_check(
    name: Annotated[str, typer.Argument(help="The profile to check (see `chainer providers`).")],
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="Overrides the profile's base URL.")
    ] = None,
) -> None:
    """Make one cheap authenticated read (a one-task page of the task list): no credits are spent."""

    async def main() -> str:
        profile = profiles.get(name)
        if profile is None:
            raise errors.ConfigError(f"no provider profile {name!r}; see `chainer providers`")
        provider = profiles.from_environment(profile=profile, base_url=base_url)
        if provider is None:
            needs = "KLING_ACCESS_KEY and KLING_SECRET_KEY" if profile.auth == "jwt" else "KLING_API_KEY"
            raise errors.ConfigError(f"no credentials set: {name} needs {needs}")
        async with KlingClient(provider) as client:
            tasks = await client.list_tasks("text2video", page=1, page_size=1)
            found = await balance.fetch(client)
        packs = "".join(
            f"\n    {p.resource_pack_name or p.resource_pack_id} ({p.resource_pack_type or 'untyped'}): "
            f"{p.remaining_quantity:g} of {p.total_quantity:g} units left, {p.status}, valid until "
            f"{balance.day(p.invalid_time)}"
            for p in found.packs
        )
        return (
            f"{name}: credentials and base URL work ({provider.endpoint('/v1/videos/text2video')}, "
            f"{len(tasks)} task(s) on the first page)\n{found.describe()}{packs}"
        )

    try:
        out.print(anyio.run(main), markup=False)
    except errors.ChainerError as exc:
        raise fail(exc) from None
